"""The training run: ``setup`` builds everything once, ``loop.train`` runs sample → score → reward → update →
log → save, ``update`` computes the gradients of one batch, ``placement`` says where the weights live and how
the sampler sees them (one copy, FSDP shards: ``fsdp``)."""
