# The paper's DiffLoRA-32 + GroupNorm: DiffLoRA-32 with each head's output normalised (RMSNorm over
# head_dim, times 1 - lambda_init), the Differential Transformer's sub-layer norm. In the paper this
# run collapsed (OLMES average 0.15 against 0.42).
# The recipe, the same in every file here: Llama-3.2-1B-Instruct fine-tuned on the Tulu 2 SFT
# mixture for one epoch, 64 conversations of up to 4,096 tokens per step (2 per micro-batch, 32
# accumulated), lr 1e-4 with 3% warmup and a linear decay to 0, no weight decay, adapter dropout
# 0.1, bf16. Gradient checkpointing keeps a step within a 24 GB GPU (README, "Reproducing the paper").
#   pip install pyarrow && python data/tulu2/prepare.py
#   python train.py config/paper/difflora32_groupnorm.py
init_from = "meta-llama/Llama-3.2-1B-Instruct"
dataset = "tulu2"
out_dir = "out-paper/difflora32_groupnorm"
block_size = 4096
batch_size = 2
gradient_accumulation_steps = 32
gradient_checkpointing = True
max_iters = 5080  # one epoch: (326,154 - 1,000 held out) / 64; prepare.py prints it for the data it wrote
warmup_iters = 152  # 3% of max_iters
lr_schedule = "linear"
learning_rate = 1e-4
min_lr = 0.0
weight_decay = 0.0
grad_clip = 0.0  # open-instruct's default (the paper does not say it clipped)
dtype = "bfloat16"
eval_interval = 500
eval_iters = 50  # 100 held-out conversations
log_interval = 10
method = "difflora"
variant = "both"
lora_rank = 32
lora_alpha = 64.0
lora_dropout = 0.1
learn_lambda = True
lambda_init = None
groupnorm = True
