"""The special token ids every sequence shares, in one torch-free module of the shared floor:
the tasks' sequence format (`posenc.tasks.format`) writes them and the encodings that read
tokens (`posenc.encodings.base`, `posenc.encodings.digits`) recognise them."""

PAD, BOS, SEP, EOS = 0, 1, 2, 3
SPECIALS = ("<pad>", "<bos>", "<sep>", "<eos>")  # their names, in id order
N_SPECIAL = len(SPECIALS)
FIRST_SYMBOL = N_SPECIAL  # a task's symbol k is token id FIRST_SYMBOL + k
