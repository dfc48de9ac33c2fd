# The paper's DiffLoRA-32 + GroupNorm: DiffLoRA-32 with each head's output normalised (RMSNorm over
# head_dim, times 1 - lambda_init), the Differential Transformer's sub-layer norm. In the paper this
# run collapsed (OLMES average 0.15 against 0.42).
#   pip install pyarrow && python data/tulu2/prepare.py
#   python train.py config/paper/difflora32_groupnorm.py
import os
exec(open(os.path.join(os.path.dirname(__file__), "difflora32.py")).read())  # difflora32, and through it the recipe
out_dir = "out-paper/difflora32_groupnorm"
groupnorm = True
