"""The choices of :mod:`scoring.sampling`, in a module free of numpy and Keras, so that the ``vae``
commands declare their flags with them without importing either (:mod:`pipeline.beam.defaults`)."""

#: Where ``prior`` and ``conditional`` samples draw their latents: ``fitted``, the model's aggregate
#: posterior (:mod:`scoring.latent_prior`; N(0, I) for a model saved without one), or ``standard``,
#: N(0, I), the prior the VAE was trained against.
LATENT_PRIORS = ("fitted", "standard")
DEFAULT_LATENT_PRIOR = "fitted"
#: Pixels of a synthetic image are drawn from the likelihood tempered to p(x|z)^(1/T), T this
#: temperature, 1 a plain draw; 0 (the default) decodes to the likelihood's mean on the data's grid of
#: grey levels, so that the variety of the samples comes from the latent, not from pixel noise.
#: README "Synthetic images" for the measurements behind the default.
DEFAULT_PIXEL_TEMPERATURE = 0.0
#: What ``vae generate --method`` samples from: the prior, the prior given a label, or the posterior of images.
SAMPLE_METHODS = ("prior", "conditional", "posterior")
