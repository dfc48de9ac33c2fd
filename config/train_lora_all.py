# The paper's main baseline: LoRA r=8 on every linear map of every block (q, k, v, attention
# output, MLP in and out): 1,327,104 adapter parameters on gpt2, 1.13x DiffLoRA's at rank 16.
out_dir = "out-shakespeare-lora-all"
method = "lora"
lora_targets = "q,k,v,attn_out,mlp_in,mlp_out"
lora_rank = 8
lora_alpha = 16.0
