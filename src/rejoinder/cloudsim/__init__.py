"""A simulated cloud: fake STT, LLM and TTS services in a separate process, over HTTP.

The benchmark runs the server against it to measure the server's own overhead against
provider latencies it knows exactly (a :class:`Profile`).

    profile.py  the latency/failure profile, loaded from TOML (``profiles/*.toml``)
    faults.py   per-request failure draws, deterministic for a seed
    service.py  the aiohttp app (HTTP protocol in its docstring) and ``main(argv)``
    sttstream.py  the streaming STT's WebSocket (partials while the audio comes, finals)
    process.py  ``start_cloudsim`` / ``stop_cloudsim``: run it as a child process
    stack.py    ``cloud_stack(url)``: the provider stack that talks to it

Run it by hand: ``python -m rejoinder.cloudsim --profile cloud-typical --port 8765``.
"""

from rejoinder.cloudsim.process import running_cloudsim, start_cloudsim, stop_cloudsim
from rejoinder.cloudsim.profile import Profile, load_profile, shipped_profiles

__all__ = ["Profile", "load_profile", "running_cloudsim", "shipped_profiles", "start_cloudsim",
           "stop_cloudsim"]
