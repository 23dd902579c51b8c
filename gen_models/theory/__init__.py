"""The GAN-theory experiments as pure functions: each module computes its numbers (``run``) and
draws its figure (``plot``); ``experiments/theory/<name>.py`` are the command lines.

* ``optimal_discriminator``: a trained discriminator against D* = p / (p + q) and the value
  −log 4 + 2·JSD (Goodfellow et al. 2014).
* ``vanishing_gradients``: the generator's gradient norm as a discriminator trained from
  scratch improves (Arjovsky & Bottou 2017, Fig. 2).
* ``disjoint_supports``: KL, JSD and W1 between parallel segments (Arjovsky et al. 2017, Ex. 1).
* ``w1_landscape``: W1 is convex in the distribution, not in the generator's parameters.
"""
