// The baseline of the boot benchmark: a bare busybox initramfs for the same kernel, packed by the
// project's own cpio writer and compressed like the image under test. Its /init does the least a
// deploy ramdisk must do before it can talk to Ironic — mount /proc, /sys and /dev, load the virtio
// NIC driver, DHCP on eth0 — and then "heartbeats" with busybox wget against the bench's Ironic
// stub; the difference to the real image's first heartbeat is what the agent and its toolset cost.
//
// busybox comes from Debian's busybox-static .deb and the virtio modules from the kernel .deb, both
// through the Debian layer's verified cache (dist/debian/*), so the build's cache dir is reused.
import {rm, stat} from 'node:fs/promises'
import {join} from 'node:path'
import {COMPRESSIONS, compressFile} from '../../dist/builder/compress.js'
import {writeCpio} from '../../dist/builder/cpio.js'
import {FileTree} from '../../dist/builder/tree.js'
import {addUsrMergeLinks, extractDeb, noDocs} from '../../dist/debian/extract.js'
import {installKernelModules, prepareKernel} from '../../dist/debian/kernel.js'
import {fetchPackages, resolvePackages} from '../../dist/debian/packages.js'

/** virtio_pci makes the virtio devices appear; virtio_net (and its dependencies) drives the NIC. */
const MODULES = ['virtio_pci', 'virtio_net']

// The kernel passes `rdk.bench-url=…` through /proc/cmdline; /init keeps trying until the stub
// answers, then idles (PID 1 must never exit).
const INIT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "bench-init: started ($(cut -d' ' -f1 /proc/uptime) s)"
modprobe -a virtio_pci virtio_net
n=0
while ! [ -e /sys/class/net/eth0 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
ip link set lo up
udhcpc -i eth0 -q -f -n -t 10 -T 1 -s /etc/udhcpc.script
echo "bench-init: network up ($(cut -d' ' -f1 /proc/uptime) s)"
url=$(tr ' ' '\\n' < /proc/cmdline | sed -n 's/^rdk\\.bench-url=//p')
while ! wget -q -O- --post-data '{}' --header 'Content-Type: application/json' "$url"; do sleep 0.2; done
echo "bench-init: heartbeat sent ($(cut -d' ' -f1 /proc/uptime) s)"
while :; do sleep 3600; done
`

const UDHCPC_SCRIPT = `#!/bin/sh
case "$1" in
  bound|renew)
    ifconfig "$interface" "$ip" netmask "\${subnet:-255.255.255.0}" up
    for r in $router; do route add default gw "$r" dev "$interface"; break; done
    ;;
  deconfig) ifconfig "$interface" 0.0.0.0 up ;;
esac
exit 0
`

/**
 * Build the baseline image into `workDir`. `kernelVersion` is the image-under-test's kernel: the
 * modules must come from the same package, or the check fails loudly.
 */
export async function buildBusyboxInitramfs({cacheDir, workDir, compress, kernelVersion, mtime = 1704067200}) {
  if (!COMPRESSIONS.includes(compress)) throw new Error(`the image's compression '${compress}' is not one rdk knows (${COMPRESSIONS.join(', ')})`)
  const t0 = Date.now()
  const kernel = await prepareKernel({cacheDir, modules: MODULES, firmwarePackages: []})
  if (kernelVersion && kernel.kernelVersion !== kernelVersion) {
    throw new Error(`the kernel package resolves to ${kernel.kernelVersion} but the image was built with ${kernelVersion}: cannot pair its modules`)
  }
  const [bb] = await resolvePackages(['busybox-static'], {noDependencies: true})
  const [deb] = await fetchPackages([bb], cacheDir)

  const tree = new FileTree()
  addUsrMergeLinks(tree)
  for (const d of ['/dev', '/proc', '/sys', '/etc', '/tmp', '/run', '/usr/bin', '/usr/sbin']) tree.addDir(d, d === '/tmp' ? 0o1777 : 0o755)
  // The kernel opens /dev/console for init's stdio before /init can mount devtmpfs.
  tree.addDevice('/dev/console', 'char', 5, 1, 0o600)
  tree.addDevice('/dev/null', 'char', 1, 3, 0o666)
  await tree.withSource('busybox-static', () => extractDeb(deb, tree, {source: 'busybox-static', filter: noDocs}))
  await installKernelModules(kernel, tree, {workDir, compress: false})
  tree.addFile('/init', INIT, {mode: 0o755})
  tree.addFile('/etc/udhcpc.script', UDHCPC_SCRIPT, {mode: 0o755})

  const cpio = join(workDir, 'busybox.cpio')
  const out = join(workDir, `busybox.initramfs`)
  const stats = await writeCpio(tree, cpio, {mtime})
  await compressFile(compress, cpio, out)
  await rm(cpio, {force: true})
  return {
    path: out,
    rawBytes: stats.bytes,
    size: (await stat(out)).size,
    busyboxVersion: bb.version,
    kernelVersion: kernel.kernelVersion,
    modules: kernel.modules.map((m) => m.name),
    ms: Date.now() - t0,
  }
}
