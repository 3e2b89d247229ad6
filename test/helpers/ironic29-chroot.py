"""Run one command inside the Ironic 29 (Debian trixie) chroot, for rdk's test suite.

Started by test/helpers/ironic.ts, already inside a private mount namespace:

    unshare --mount --propagation private -- /usr/bin/python3 ironic29-chroot.py \
        ROOT STATE_DIR [--env K=V ...] -- COMMAND ARGS...

ROOT is the chroot .ci/install-deps built with mmdebstrap; STATE_DIR is the test's Ironic
directory (config, sqlite db, logs, images). In the namespace we

1. mount a tmpfs on ROOT/tmp when STATE_DIR is under /tmp (so the mount point below is made in
   that tmpfs, not in the cached chroot),
2. bind STATE_DIR at the same path inside ROOT (every path in ironic.conf stays valid),
3. mount a fresh /proc at ROOT/proc,
4. chroot into ROOT, chdir to STATE_DIR and exec COMMAND with exactly the --env variables
   (as `env -i`).

No fork: unshare and this script exec in turn, so the PID the harness holds is Ironic's. All
mounts belong to the namespace and vanish with the process; nothing stays mounted on the host.
The chroot shares the host's network namespace (Ironic binds 127.0.0.1 as on the host).
"""

import os
import subprocess
import sys


def main(argv):
    if len(argv) < 4 or '--' not in argv:
        sys.exit('usage: ironic29-chroot.py ROOT STATE_DIR [--env K=V ...] '
                 '-- COMMAND ARGS...')
    root, state = os.path.abspath(argv[0]), os.path.abspath(argv[1])
    sep = argv.index('--')
    opts, command = argv[2:sep], argv[sep + 1:]
    env = {}
    i = 0
    while i < len(opts):
        if opts[i] != '--env' or i + 1 >= len(opts) or '=' not in opts[i + 1]:
            sys.exit('ironic29-chroot.py: bad option %r' % opts[i])
        key, value = opts[i + 1].split('=', 1)
        env[key] = value
        i += 2
    if not command:
        sys.exit('ironic29-chroot.py: no command')
    if not os.path.isfile(os.path.join(root, '.rdk-complete')):
        sys.exit('ironic29-chroot.py: %s is not a complete chroot '
                 '(run .ci/install-deps)' % root)

    def mount(*args):
        subprocess.run(['mount', *args], check=True)

    if state == '/tmp' or state.startswith('/tmp/'):
        mount('-t', 'tmpfs', '-o', 'mode=1777', 'tmpfs', root + '/tmp')
    target = root + state
    os.makedirs(target, exist_ok=True)
    mount('--bind', state, target)
    mount('-t', 'proc', 'proc', root + '/proc')
    os.chroot(root)
    os.chdir(state)
    os.execve(command[0], command, env)


if __name__ == '__main__':
    main(sys.argv[1:])
