# The paper's DiffLoRA-64 with lambda fixed at 0.1 (which the paper found more stable): the negative
# term only at r=64, alpha=128, lambda = 0.1 in every layer, not learned.
#   pip install pyarrow && python data/tulu2/prepare.py
#   python train.py config/paper/difflora64_lambda01.py
import os
exec(open(os.path.join(os.path.dirname(__file__), "difflora64_negative.py")).read())  # difflora64_negative, and through it the recipe
out_dir = "out-paper/difflora64_lambda01"
learn_lambda = False
lambda_init = 0.1
