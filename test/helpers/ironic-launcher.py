"""Run Ironic's API and conductor in one process, for rdk's test suite.

Started by test/helpers/ironic.ts with the Debian interpreter (/usr/bin/python3,
which can import the python3-ironic package) as:

    /usr/bin/python3 ironic-launcher.py --config-file ironic.conf

(for Ironic 29: trixie's /usr/bin/python3 inside the chroot, see ironic29-chroot.py).

The config must set ``rpc_transport = none``, which is what
``ironic.cmd.singleprocess`` (the combined "ironic" executable) expects.

Test-only changes made before Ironic starts:

1. fake-hardware's management interface only accepts the boot device
   ``pxe`` (ironic/drivers/modules/fake.py, FakeManagement
   .get_supported_boot_devices). A ``direct`` deploy ends with
   prepare_instance_boot() setting the boot device to ``disk``, which then
   fails with "Invalid boot device disk specified." and leaves the node in
   ``deploy failed``. We patch the method to also return ``disk`` (21.4 and 29).
   Tests relying on it should say so.

2. Only for Ironic 29 (the harness sets RDK_IRONIC_PATCH_PARENT_NODE=1):
   Debian trixie's python3-ironic 1:29.0.5-0+deb13u3 calls
   ``api_utils.authorize_node_link_patch(node, patch, 'parent_node')`` on every
   node PATCH, and that returns the node itself when the patch has no
   ``/parent_node`` value, so every PATCH makes the node its own parent. The
   next power action then locks the node twice and a deploy fails in
   tear_down_agent with "ChildNodeLocked: Node X child_node X is presently
   locked". We wrap the function to return None for ``parent_node`` when the
   patch has no ``/parent_node`` value (what an unchanged link means). Ironic
   21.4 has no such function: nothing is patched there.

3. stdin is watched from a real OS thread: the harness keeps a pipe open on
   our stdin, so EOF means the Node.js process that started us has gone away
   (e.g. a killed vitest worker). We then stop ourselves (SIGTERM, then a hard
   exit) so no Ironic is left running after the test run.
"""

import os
import signal
import sys

# Importing ironic.cmd first applies eventlet's monkey patching (see
# ironic/cmd/__init__.py); every other Ironic import must come after it.
from ironic.cmd import singleprocess  # noqa: E402
from ironic.common import boot_devices  # noqa: E402
from ironic.drivers.modules import fake  # noqa: E402

import eventlet.patcher  # noqa: E402


def _patch_fake_management():
    # fake-hardware accepts only PXE; a direct deploy needs DISK at its very
    # end (prepare_instance_boot). Test-only patch, see the module docstring.
    def get_supported_boot_devices(self, task):
        return [boot_devices.PXE, boot_devices.DISK]

    fake.FakeManagement.get_supported_boot_devices = get_supported_boot_devices


def _patch_parent_node_link():
    # Ironic 29.0.5 (Debian deb13u3) bug, see the module docstring (2.).
    from ironic.api.controllers.v1 import utils as api_utils

    original = getattr(api_utils, 'authorize_node_link_patch', None)
    if original is None:
        return

    def authorize_node_link_patch(orig_node, patch, field_name):
        if (field_name == 'parent_node'
                and not api_utils.get_patch_values(patch, '/parent_node')):
            return None
        return original(orig_node, patch, field_name)

    api_utils.authorize_node_link_patch = authorize_node_link_patch


def _watch_parent_via_stdin():
    real_threading = eventlet.patcher.original('threading')
    real_time = eventlet.patcher.original('time')

    def watch():
        try:
            while True:
                # A real (unpatched) blocking read in a real OS thread.
                chunk = os.read(0, 4096)
                if not chunk:
                    break
        except OSError:
            pass
        sys.stderr.write('ironic-launcher: stdin closed (parent gone), '
                         'stopping Ironic\n')
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
    _patch_fake_management()
    if os.environ.get('RDK_IRONIC_PATCH_PARENT_NODE') == '1':
        _patch_parent_node_link()
    if os.environ.get('RDK_IRONIC_WATCH_STDIN') == '1':
        _watch_parent_via_stdin()
    singleprocess.main()


if __name__ == '__main__':
    main()
