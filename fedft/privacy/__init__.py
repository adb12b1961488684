"""Client-level differential privacy: the ``[privacy]`` section, clipping, noise, accounting.

================  ======================================================================
module            what it holds
================  ======================================================================
``config``        :class:`PrivacySection`, the ``[privacy]`` table (off by default)
``accountant``    the RDP accountant (Google's ``dp-accounting``, as Flower's ``flwr[dp]``)
``mechanisms``    L2 clipping of a factor update, the Gaussian mechanism on a sum of them
``zo``            the zeroth-order path: a step's scalar clipped, noised, stochastically rounded
``plan``          what one round releases (its noise multiplier, compositions, sampling rate)
================  ======================================================================

Pure maths: nothing here imports Flower. See ``docs/privacy.md``.
"""
