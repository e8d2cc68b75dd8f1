"""Request control: what happens to a request around the scheduling cycle (the reference EPP's
``requestcontrol/``).

- ``director.Director``: candidates, saturation check, the profiles' pick, and the in-flight accounting
  from dispatch to finish (the lag-free load signal);
- ``admission.AdmissionQueue``: optional flow control a front door awaits before dispatching.

Sits above ``scheduling/`` (framework, plugins, profiles) and ``flowcontrol/`` (saturation detectors);
built from configuration by ``kvgate.config.director.build_director``.
"""
