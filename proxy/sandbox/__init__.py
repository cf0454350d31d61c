"""The sandbox: jails that own the agent's view of the machine (network, files, processes), and the file changes each
jailed run leaves behind, which a person reviews, keeps or undoes.

Owns: `jail` (starting a jailed command and bridging it to the proxy), `jailinit` (the jail's first process; standard
library only), `view` (what a jail hides, protects and passes), `changes` (reading a run's copy-on-write layer),
`workspace` (applying and undoing those changes on the person's files), `runs` (a run's record and its life),
`agentenv` (the proxy settings an agent's command is given, and the proof that the proxy at them is ours), `doctor`,
`canary` and `doctorprobe` (what `doctor` runs inside a jail to show every way around the proxy is closed).
May import the core, `audit` and `credentials` (the files a jail must hide); never mitmproxy, except
`jail.proxy_for_jail`, which starts the runtime's in-process proxy when none runs.
"""
