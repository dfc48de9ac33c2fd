# The SmolLM2 lab at a larger scale, for one GPU: Llama-3.2-1B-Instruct from the hub (the
# paper's base), 1,024-token training examples with 3-8 needles, 400 steps of 32 examples.
# Stack it after config/lab/train.py, and a method's config after it:
#   python data/needle/prepare.py --tokenizer=meta-llama/Llama-3.2-1B-Instruct --kinds=single,multikey,multivalue --needles=3-8 --tokens=1024 --n_train=20000 --out_dir=out-lab-gpu/needle
#   python train.py config/lab/train.py config/lab/gpu.py --seed=1 --out_dir=out-lab-gpu/difflora-s1
#   python train.py config/lab/train.py config/lab/gpu.py config/lab/negative.py --seed=1 --out_dir=out-lab-gpu/negative-s1
#   python train.py config/lab/train.py config/lab/gpu.py config/train_lora.py --seed=1 --out_dir=out-lab-gpu/lora-s1
init_from = "meta-llama/Llama-3.2-1B-Instruct"
dataset = "out-lab-gpu/needle"
out_dir = "out-lab-gpu/difflora"
block_size = 1023
batch_size = 16
gradient_accumulation_steps = 2
max_iters = 400
eval_interval = 25
eval_iters = 8
log_interval = 10
learning_rate = 3e-4
min_lr = 3e-5
warmup_iters = 12
