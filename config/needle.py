# The needle-retrieval task (data/needle: 256-token examples, 3 needles, loss on the answer
# only; train.py prepares the data when it is missing). DiffLoRA by default; stack another
# config after it for the LoRA baseline at the same budget:
#   python train.py config/needle.py
#   python train.py config/needle.py config/train_lora.py --out_dir=out-needle-lora
#   python eval_needle.py --models=gpt2,out-needle-lora,out-needle-difflora
out_dir = "out-needle-difflora"
dataset = "needle"
block_size = 255  # examples are 256 tokens
batch_size = 16
gradient_accumulation_steps = 2
max_iters = 400
eval_interval = 50
learning_rate = 3e-4
min_lr = 3e-5
warmup_iters = 12
