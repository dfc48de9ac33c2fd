# The SmolLM2 lab's fine-tune (README, "The whole story on a CPU"): DiffLoRA with both terms at
# rank 16 on the lab's needle data (256-token examples of the three kinds, 3-6 needles), 40
# steps of 4 examples, evaluated every 5 steps for the learning curves. Stack another config
# after it for the other methods at the same trainable-parameter budget:
#   python train.py config/lab/train.py --seed=1 --out_dir=out-lab/difflora-s1
#   python train.py config/lab/train.py config/lab/negative.py --seed=1 --out_dir=out-lab/negative-s1
#   python train.py config/lab/train.py config/train_lora.py --seed=1 --out_dir=out-lab/lora-s1
out_dir = "out-lab/difflora"
dataset = "out-lab/needle"  # python data/needle/prepare.py --tokenizer=smollm2 --kinds=single,multikey,multivalue --needles=3-6 --out_dir=out-lab/needle
batch_size = 4
gradient_accumulation_steps = 1
max_iters = 40
eval_interval = 5
eval_iters = 3
log_interval = 5
