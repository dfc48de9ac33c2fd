# A baby GPT-2 pretrained from scratch on tiny-shakespeare in about 15 minutes on 2 CPU cores.
# GPT-2's BPE vocabulary, so every script works on the result; the folder it writes
# (config.json + model.safetensors) is a base model like any other: --init_from=out-pretrain.
#   python data/shakespeare/prepare.py             # offline: --input PATH/input.txt
#   python train.py config/pretrain_shakespeare.py
# The shape won an equal-time comparison on 2 CPU cores (README); the 50,257-wide output layer
# is most of the cost, so width costs far more than depth here.
out_dir = "out-pretrain"
init_from = "scratch"
method = "full"
dataset = "shakespeare"
device = "cpu"
n_layer = 4
n_head = 4
n_embd = 128
block_size = 256
dropout = 0.2
batch_size = 8
gradient_accumulation_steps = 1
max_iters = 800
eval_interval = 200
eval_iters = 10
log_interval = 25
# nanoGPT's baby-model recipe: a high learning rate, short warmup, cosine to lr/10, weight decay 0.1 on matrices
learning_rate = 2e-3
min_lr = 2e-4
warmup_iters = 40
weight_decay = 0.1
beta2 = 0.99
