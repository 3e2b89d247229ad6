import {Flags} from '@oclif/core'
import {stringify} from 'yaml'
import {buildFlagTable, resolveSpec} from '../builder/spec.js'
import {buildImage, planImage} from '../flavors/index.js'
import {RdkCommand} from './base.js'

const specFlags = Object.fromEntries(
  buildFlagTable().map((f) => [f.name, f.multiple ? Flags.string({description: f.help, multiple: true}) : Flags.string({description: f.help})]),
)

const mb = (n: number) => `${(n / 1e6).toFixed(n < 1e7 ? 2 : 1)} MB`

export default class Build extends RdkCommand {
  static override summary = 'Build a deploy ramdisk (kernel + initramfs) from elements'
  static override description =
    'Settings come from --config FILE (else ./rdk.yaml, else the built-in default config), then these flags; see docs/build.md. ' +
    'Single-valued flags replace the config value; --element, --elements-path, --ssh-key and --hardware-manager add to it; --kernel-arg K=V sets K. ' +
    'Progress goes to stderr; artefacts are renamed into the output directory only when the whole build succeeded.'
  static override examples = [
    '<%= config.bin %> build',
    '<%= config.bin %> build --config rdk.yaml --output ./out --json',
    '<%= config.bin %> build --format iso --dry-run',
    '<%= config.bin %> build --element my-tools --kernel-arg console=ttyS0,115200 --ssh-key ~/.ssh/id_ed25519.pub --compress xz',
  ]
  static override flags = {
    config: Flags.string({description: 'build config file (YAML) [default: ./rdk.yaml if present, else the built-in default]'}),
    json: Flags.boolean({description: 'print a machine-readable result (artefacts, sizes, sha256, stage timings) on stdout'}),
    'print-spec': Flags.boolean({description: 'print the resolved build spec as YAML and exit'}),
    'dry-run': Flags.boolean({
      description:
        "print the resolved spec, the elements and the flavor's stages in order (which would skip, and why), then exit: nothing is built or written (--json: as JSON)",
    }),
    ...specFlags,
  }

  async run(): Promise<void> {
    const {flags} = await this.parse(Build)
    const {config, json, 'print-spec': printSpec, 'dry-run': dryRun, debug: _debug, ...settings} = flags
    const {spec, configOrigin} = await resolveSpec({configFile: config, flags: settings})
    if (printSpec) {
      this.log(`# from ${configOrigin} and flags\n${stringify(spec).trimEnd()}`)
      return
    }
    if (dryRun) {
      const plan = await planImage(spec)
      if (json) {
        this.log(JSON.stringify({dryRun: true, configOrigin, spec, ...plan}, null, 2))
        return
      }
      this.log(`# rdk build --dry-run: nothing is built or written\n# spec from ${configOrigin} and flags\n${stringify(spec).trimEnd()}`)
      this.log(`# elements (${plan.elements.length}): ${plan.elements.map((e) => e.name).join(', ')}`)
      this.log(`# stages of flavor ${plan.flavor} (${plan.stages.length}), in order:`)
      const width = Math.max(...plan.stages.map((st) => st.name.length))
      for (const [i, st] of plan.stages.entries()) {
        this.log(`${String(i + 1).padStart(2)}. ${st.name.padEnd(width)}  ${st.skip ? `skip: ${st.skip}` : 'run'}  — ${st.description}`)
      }
      return
    }
    const result = await buildImage(spec)
    if (json) {
      this.log(JSON.stringify(result, null, 2))
      return
    }
    for (const a of result.artefacts) this.log(`${a.path}  ${mb(a.size)}  sha256:${a.sha256}`)
    if (result.contributions.length) this.log(`size by contributor (uncompressed): ${result.contributions.map((e) => `${e.name} ${mb(e.bytes)}`).join(', ')}`)
    if (result.layers.length)
      this.log(`initramfs layers (${spec.compress}): ${result.layers.map((l) => `${l.name} ${mb(l.compressed)}${l.cached ? ' (cached)' : ''}`).join(', ')}`)
  }
}
