# The paper's main DiffLoRA run, DiffLoRA-32: both terms at r=32, alpha=64, lambda learned from
# the depth schedule, GroupNorm off, V and O frozen.
#   pip install pyarrow && python data/tulu2/prepare.py
#   python train.py config/paper/difflora32.py
import os
exec(open(os.path.join(os.path.dirname(__file__), "recipe.py")).read())  # the paper's recipe, the same for every run
out_dir = "out-paper/difflora32"
method = "difflora"
variant = "both"
lora_rank = 32
lora_alpha = 64.0
learn_lambda = True
lambda_init = None
groupnorm = False
