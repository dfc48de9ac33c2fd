# The paper's baseline "LoRA": r=8, alpha=16 on every linear map of every block (q, k, v, o, gate, up,
# down), attention unchanged.
#   pip install pyarrow && python data/tulu2/prepare.py
#   python train.py config/paper/lora8.py
import os
exec(open(os.path.join(os.path.dirname(__file__), "recipe.py")).read())  # the paper's recipe, the same for every run
out_dir = "out-paper/lora8"
method = "lora"
lora_targets = "all"
lora_rank = 8
lora_alpha = 16.0
