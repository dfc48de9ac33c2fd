# The lab's recipe at three times its steps (120, learning curves only): stack it after
# config/lab/train.py and a method's config. The schedule keeps its shape: 3x the warmup, the same
# cosine to min_lr at the end; the same evaluation every 10 steps instead of 5.
#   python train.py config/lab/train.py config/lab/long.py --init=preserve --seed=1 --out_dir=out-lab/long-preserve-s1
#   python train.py config/lab/train.py config/train_lora.py config/lab/long.py --seed=1 --out_dir=out-lab/long-lora-s1
max_iters = 120
warmup_iters = 12
eval_interval = 10
