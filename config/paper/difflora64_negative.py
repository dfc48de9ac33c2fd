# The paper's DiffLoRA-64 ("right term only"): Q1 and K1 stay pretrained and frozen, the negative
# term's Q2 and K2 are LoRA-only at r=64, alpha=128 (the same adapter parameters as DiffLoRA-32),
# lambda learned from the depth schedule.
#   pip install pyarrow && python data/tulu2/prepare.py
#   python train.py config/paper/difflora64_negative.py
import os
exec(open(os.path.join(os.path.dirname(__file__), "recipe.py")).read())  # the paper's recipe, the same for every run
out_dir = "out-paper/difflora64_negative"
method = "difflora"
variant = "negative"
lora_rank = 64
lora_alpha = 128.0
learn_lambda = True
lambda_init = None
groupnorm = False
