# The default task (DiffLoRA on SmolLM2, needle retrieval: 256-token examples with 3 needles,
# the loss on the answer only) sized for one GPU: 400 iterations of 32 examples. Stack
# another config after it for the LoRA baseline at the same budget:
#   python train.py config/needle_gpu.py
#   python train.py config/needle_gpu.py config/train_lora.py --out_dir=out-needle-gpu-lora
#   python analysis/eval_needle.py --models=smollm2,out-needle-gpu-lora,out-needle-gpu --lengths=1024,2048,4096 --needles=8
out_dir = "out-needle-gpu"
batch_size = 16
gradient_accumulation_steps = 2
max_iters = 400
eval_interval = 50
eval_iters = 20
log_interval = 10
learning_rate = 3e-4
min_lr = 3e-5
warmup_iters = 12
