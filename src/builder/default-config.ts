/**
 * The config `rdk build` uses when it is given no --config and there is no ./rdk.yaml: the
 * tiny flavor with its default elements, written out so `rdk build --print-spec` and the docs show
 * what a config file looks like. Every key is optional; see docs/build.md.
 */
export const DEFAULT_CONFIG_NAME = '<built-in default config>'

export const DEFAULT_CONFIG_YAML = `# rdk build: embedded default config (used when there is no --config and no ./rdk.yaml)
flavor: tiny
# name: rdk-tiny              # default: rdk-<flavor>
# output: ./out
elements: []                  # added to the flavor's default elements
formats: [kernel, initramfs]
compress: xz                  # smallest (x86 BCJ); gzip needs no host tool; zstd unpacks fastest
nodeIcu: en                   # root + English ICU data in Node (full: every locale, +29 MB)
kernelArgs: {}
# sshKeys: [~/.ssh/id_ed25519.pub]
# hardwareManagers: [./my-managers]
# debianSuite: bookworm
`
