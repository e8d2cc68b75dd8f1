"""Request control: what happens to a request around the scheduling cycle (the reference EPP's
``requestcontrol/``).

- ``director.Director``: candidates, saturation check, the profiles' pick, and the in-flight accounting
  from dispatch to finish (the lag-free load signal);
- ``Director.admit``: what both front doors await; with flow control on (``kvgate.flowcontrol``) the
  request waits there for capacity before its pick.

Sits above ``scheduling/`` (framework, plugins, profiles) and ``flowcontrol/`` (saturation detectors);
built from configuration by ``kvgate.config.director.build_director``.
"""
