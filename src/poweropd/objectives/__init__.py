"""The math of training, pure: rewards (one record each in ``rewards.REWARDS``), objectives (``losses``: the
REINFORCE surrogate of a reward, the full-vocabulary KL, registered in ``losses.OBJECTIVES``), the fused
output-layer ops (``fused``) and sampled-token log-probs without a B×T×V log-softmax (``logprobs``).
No I/O, no config objects, no models: tensors in, tensors out."""
