# The paper's DiffLoRA-64 with lambda fixed at 0.1 (which the paper found more stable): the negative
# term only at r=64, alpha=128, lambda = 0.1 in every layer, not learned.
#   pip install pyarrow && python data/tulu2/prepare.py
#   python train.py config/paper/difflora64_lambda01.py
import os
exec(open(os.path.join(os.path.dirname(__file__), "recipe.py")).read())  # the paper's recipe, the same for every run
out_dir = "out-paper/difflora64_lambda01"
method = "difflora"
variant = "negative"
lora_rank = 64
lora_alpha = 128.0
learn_lambda = False
lambda_init = 0.1
groupnorm = False
