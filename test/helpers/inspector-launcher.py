"""Run ironic-inspector 11.1 (API + conductor in one process) for rdk's VM tests.

Started by test/helpers/inspector.ts with the Debian interpreter (/usr/bin/python3,
which can import the python3-ironic-inspector package) as:

    /usr/bin/python3 inspector-launcher.py dbsync --config-file inspector.conf
    /usr/bin/python3 inspector-launcher.py serve --config-file inspector.conf

`serve` is what the package's ironic-inspector command does (ironic_inspector.cmd.all:
the WSGI API and the RPC conductor in one process; the config must say
``standalone = True`` and ``transport_url = fake://``). Nothing in inspector is patched.

stdin is watched from a real OS thread: the harness keeps a pipe open on our stdin, so
EOF means the Node.js process that started us has gone away. We then stop ourselves
(SIGTERM, then a hard exit) so no inspector is left running after the test run.
"""

import os
import signal
import sys

# Importing ironic_inspector.cmd applies eventlet's monkey patching; every other
# inspector import must come after it.
import ironic_inspector.cmd  # noqa: F401,E402

import eventlet.patcher  # noqa: E402


def _watch_parent_via_stdin():
    real_threading = eventlet.patcher.original('threading')
    real_time = eventlet.patcher.original('time')

    def watch():
        try:
            while True:
                chunk = os.read(0, 4096)
                if not chunk:
                    break
        except OSError:
            pass
        sys.stderr.write('inspector-launcher: stdin closed (parent gone), '
                         'stopping ironic-inspector\n')
        sys.stderr.flush()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except OSError:
            pass
        real_time.sleep(10)
        os._exit(1)

    t = real_threading.Thread(target=watch, name='parent-watch', daemon=True)
    t.start()


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in ('dbsync', 'serve'):
        sys.exit('usage: inspector-launcher.py dbsync|serve --config-file FILE')
    what, args = sys.argv[1], sys.argv[2:]
    if what == 'dbsync':
        from ironic_inspector.cmd import dbsync
        return dbsync.main(args + ['upgrade'])
    if os.environ.get('RDK_INSPECTOR_WATCH_STDIN') == '1':
        _watch_parent_via_stdin()
    from ironic_inspector.cmd import all as inspector_all
    return inspector_all.main(args)


if __name__ == '__main__':
    sys.exit(main())
