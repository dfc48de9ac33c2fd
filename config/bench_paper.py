# bench/speed.py on the paper's runs (config/paper): Llama-3.2-1B's shape with random weights, a micro-
# batch of 2 sequences of 4,096 tokens, every target counted (the worst case), gradient
# checkpointing and the chunked loss on as in config/paper; DiffLoRA-32 (rank 32, both terms) against the LoRA
# baseline (r=8 on every linear map). On a GPU, bf16:
#   python bench/speed.py config/bench_paper.py --device=cuda
#   python bench/speed.py config/bench_paper.py --device=cuda --compile=True
family = "llama"
n_layer = 16
n_head = 32
n_kv_head = 8
n_embd = 2048
n_inner = 8192
vocab_size = 128256
batch_size = 2
seq_lens = "4096"
methods = "lora,difflora"
explicit = False  # the explicit path's T x T maps at 4,096 tokens are what the fused path avoids
rank = 32
lora_rank = 8
lora_targets = "all"
gradient_checkpointing = True
loss_chunk = 1024
ratio_shapes = "2x4096"
pairs = 5
hf = False
gen = False
