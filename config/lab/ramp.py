# DiffLoRA in the paper's form (init=paper: its random negative map, learned lambda from the depth
# schedule 0.2-0.8) with lambda ramped in over the first 20 of the lab's 40 steps, after axolotl's
# differential-transformer converter: the lambda each layer uses is min(1, step / 20) times the
# learned one, so step 0 is the base model and steps 20-40 train the paper's differential form.
# Stack it after config/lab/train.py:
#   python train.py config/lab/train.py config/lab/ramp.py --seed=1 --out_dir=out-lab/ramp-s1
lambda_ramp = 20
