# The paper's recipe (DiffLoRA, arXiv 2507.23588), shared by the five runs in this folder, each of
# which runs this file first: Llama-3.2-1B-Instruct fine-tuned on the Tulu 2 SFT mixture for one
# epoch, 64 conversations of up to 4,096 tokens per step (2 per micro-batch, 32 accumulated), lr
# 1e-4 with 3% warmup and a linear decay to 0, no weight decay, adapter dropout 0.1, bf16.
# Gradient checkpointing and the chunked loss keep a step under 8 GiB (python bench/memory.py; docs/paper.md).
init_from = "meta-llama/Llama-3.2-1B-Instruct"
dataset = "tulu2"  # python data/tulu2/prepare.py (train.py runs it when the data are missing)
block_size = 4096
batch_size = 2
gradient_accumulation_steps = 32
gradient_checkpointing = True
loss_chunk = 1024  # the loss over chunks of 1,024 targets: their logits over 128,256 ids never all at once
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
lora_dropout = 0.1
