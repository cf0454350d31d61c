"""mitmproxy's addons package as goex-proxy imports it: only the addons it names, and the whole package on demand."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import goex_proxy.runtime
before = sorted(m for m in sys.modules if m.startswith("mitmproxy.addons."))
import mitmproxy.addons
everything = mitmproxy.addons.default_addons()
after = sorted(m for m in sys.modules if m.startswith("mitmproxy.addons."))
print(json.dumps({"before": before, "after": after, "defaults": sorted(type(a).__name__ for a in everything)}))
"""


def _probe(source: str) -> dict[str, list[str]]:
    ran = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, check=True)
    return json.loads(ran.stdout.splitlines()[-1])


def test_a_proxy_imports_only_the_addons_it_uses_and_the_default_set_still_works() -> None:
    found = _probe(PROBE)
    used = {"core", "disable_h2c", "errorcheck", "next_layer", "proxyserver", "termlog", "tlsconfig"}
    assert {m.removeprefix("mitmproxy.addons.") for m in found["before"]} <= used, found["before"]
    assert "mitmproxy.addons.onboarding" not in found["before"] and "mitmproxy.addons.savehar" in found["after"]
    # mitmproxy's own default set, as mitmdump builds it, once asked for
    assert {"Core", "Onboarding", "SaveHar", "Proxyserver", "TlsConfig"} <= set(found["defaults"])


def test_a_package_imported_before_goex_proxy_is_left_as_it_was() -> None:
    found = _probe("import mitmproxy.addons, sys\n" + PROBE)
    assert "mitmproxy.addons.onboarding" in found["before"]
