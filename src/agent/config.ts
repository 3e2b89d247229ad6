/**
 * Agent configuration: one table of settings from which the kernel command-line names
 * (`ipa-api-url`), the config-file keys and the CLI flags (`--api-url`) are all derived.
 *
 * Precedence, lowest first: built-in defaults < baked config file (/etc/rdk/agent.json, written by
 * `rdk build`) < kernel command line (/proc/cmdline or --cmdline FILE) < CLI flags.
 */
import {readFile} from 'node:fs/promises'

export type SettingType = 'string' | 'int' | 'float' | 'bool' | 'list'

export interface Setting {
  /** Option name as IPA spells it (snake_case); config files may use it. */
  option: string
  /** Kernel parameter; the CLI flag is this without the `ipa-` prefix. */
  param: string
  type: SettingType
  default: unknown
  help: string
}

/** Every agent setting, in one place. */
// biome-ignore format: a table, one setting per line
export const SETTINGS = [
  {option: 'api_url', param: 'ipa-api-url', type: 'list', default: [], help: 'Ironic API URL(s), comma-separated; tried in order'},
  {option: 'global_request_id', param: 'ipa-global-request-id', type: 'string', default: undefined, help: 'X-OpenStack-Request-ID sent to Ironic (req-<uuid>)'},
  {option: 'listen_host', param: 'ipa-listen-host', type: 'string', default: '::', help: 'address the agent API listens on'},
  {option: 'listen_port', param: 'ipa-listen-port', type: 'int', default: 9999, help: 'port the agent API listens on'},
  {option: 'advertise_host', param: 'ipa-advertise-host', type: 'string', default: undefined, help: 'host advertised to Ironic (auto-detected when unset)'},
  {option: 'advertise_port', param: 'ipa-advertise-port', type: 'int', default: undefined, help: 'port advertised to Ironic (default: the port the API listens on)'},
  {option: 'advertise_protocol', param: 'ipa-advertise-protocol', type: 'string', default: 'http', help: 'http or https'},
  {option: 'ip_lookup_attempts', param: 'ipa-ip-lookup-attempts', type: 'int', default: 6, help: 'attempts to find the advertise address'},
  {option: 'ip_lookup_sleep', param: 'ipa-ip-lookup-timeout', type: 'float', default: 10, help: 'seconds between advertise address attempts'},
  {option: 'network_interface', param: 'ipa-network-interface', type: 'string', default: undefined, help: 'interface to use for lookup'},
  {option: 'lookup_timeout', param: 'ipa-lookup-timeout', type: 'float', default: 600, help: 'seconds to keep trying lookup'},
  {option: 'lookup_interval', param: 'ipa-lookup-interval', type: 'float', default: 1, help: 'initial seconds between lookups (backs off to 60)'},
  {option: 'lldp_timeout', param: 'ipa-lldp-timeout', type: 'float', default: 30, help: 'seconds to wait for LLDP frames'},
  {option: 'collect_lldp', param: 'ipa-collect-lldp', type: 'bool', default: false, help: 'collect LLDP for the inventory'},
  {option: 'inspection_callback_url', param: 'ipa-inspection-callback-url', type: 'string', default: undefined, help: 'inspection endpoint (ironic-inspector /v1/continue or Ironic /v1/continue_inspection)'},
  {option: 'inspection_collectors', param: 'ipa-inspection-collectors', type: 'list', default: ['default', 'logs'], help: 'inspection collectors'},
  {option: 'inspection_dhcp_wait_timeout', param: 'ipa-inspection-dhcp-wait-timeout', type: 'float', default: 60, help: 'seconds to wait for DHCP before inspection'},
  {option: 'inspection_dhcp_all_interfaces', param: 'ipa-inspection-dhcp-all-interfaces', type: 'bool', default: false, help: 'wait for DHCP on all interfaces'},
  {option: 'hardware_initialization_delay', param: 'ipa-hardware-initialization-delay', type: 'float', default: 0, help: 'seconds to sleep after hardware managers initialise'},
  {option: 'disk_wait_attempts', param: 'ipa-disk-wait-attempts', type: 'int', default: 10, help: 'attempts to find a disk at start'},
  {option: 'disk_wait_delay', param: 'ipa-disk-wait-delay', type: 'float', default: 3, help: 'seconds between disk attempts'},
  {option: 'insecure', param: 'ipa-insecure', type: 'bool', default: false, help: 'do not verify Ironic TLS certificates'},
  {option: 'cafile', param: 'ipa-cafile', type: 'string', default: undefined, help: 'CA bundle used to verify Ironic'},
  {option: 'certfile', param: 'ipa-certfile', type: 'string', default: undefined, help: 'client certificate for Ironic'},
  {option: 'keyfile', param: 'ipa-keyfile', type: 'string', default: undefined, help: 'client key for Ironic'},
  {option: 'ntp_server', param: 'ipa-ntp-server', type: 'string', default: undefined, help: 'NTP server to sync the clock from'},
  {option: 'agent_token', param: 'ipa-agent-token', type: 'string', default: undefined, help: 'pre-generated agent token (virtual media)'},
  {option: 'image_download_connection_timeout', param: 'ipa-image-download-connection-timeout', type: 'float', default: 60, help: 'image download connect/read timeout'},
  {option: 'image_download_connection_retries', param: 'ipa-image-download-connection-retries', type: 'int', default: 9, help: 'image download retries'},
  {option: 'image_download_connection_retry_interval', param: 'ipa-image-download-connection-retry-interval', type: 'float', default: 10, help: 'seconds between image download retries'},
  {option: 'image_download_max_duration', param: 'ipa-image-download-max-duration', type: 'float', default: 0, help: 'cap on a whole image download (0: none)'},
  {option: 'ironic_api_version', param: 'ipa-ironic-api-version', type: 'string', default: undefined, help: 'Ironic API version to assume (auto-discovered when unset)'},
  {option: 'enable_vlan_interfaces', param: 'ipa-enable-vlan-interfaces', type: 'string', default: '', help: 'VLAN interfaces to create (iface.vlan, iface, all)'},
  {option: 'ignore_bootloader_failure', param: 'ipa-ignore-bootloader-failure', type: 'bool', default: undefined, help: 'do not fail when bootloader installation fails'},
  {option: 'inject_files_priority', param: 'ipa-inject-files-priority', type: 'int', default: 0, help: 'deploy priority of inject_files'},
  {option: 'guard_special_filesystems', param: 'ipa-guard-special-filesystems', type: 'bool', default: true, help: 'refuse to erase devices holding shared/clustered filesystems'},
  {option: 'http_request_timeout', param: 'ipa-http-request-timeout', type: 'float', default: 30, help: 'seconds before an Ironic API call times out'},
  {option: 'api_max_body_size', param: 'ipa-api-max-body-size', type: 'int', default: 128, help: 'largest command body the agent API accepts, in MiB (Ironic\'s write_image holds an inline config drive up to three times)'},
  {option: 'api_client_timeout', param: 'ipa-api-client-timeout', type: 'float', default: 10, help: 'seconds a client of the agent API may take to send its request headers, or pause inside a body, before the connection is closed'},
  {option: 'tls_min_version', param: 'ipa-tls-min-version', type: 'string', default: '1.2', help: 'minimum TLS version the agent API accepts'},
  {option: 'tls_cipher_suites', param: 'ipa-tls-cipher-suites', type: 'string', default: undefined, help: 'TLS 1.2 cipher list for the agent API'},
  {option: 'tls_certificate_curve', param: 'ipa-tls-certificate-curve', type: 'string', default: 'p384', help: 'curve of the auto-TLS key (p256, p384, p521)'},
  {option: 'enable_auto_tls', param: 'ipa-enable-auto-tls', type: 'bool', default: true, help: 'serve the API over TLS with a self-signed certificate when Ironic allows it'},
  {option: 'listen_tls', param: 'ipa-listen-tls', type: 'bool', default: false, help: 'serve the API over TLS with tls_cert_file/tls_key_file'},
  {option: 'tls_cert_file', param: 'ipa-tls-cert-file', type: 'string', default: undefined, help: 'static TLS certificate for the agent API'},
  {option: 'tls_key_file', param: 'ipa-tls-key-file', type: 'string', default: undefined, help: 'static TLS key for the agent API'},
  {option: 'auto_tls_dir', param: 'ipa-auto-tls-dir', type: 'string', default: '/run/ironic-python-agent', help: 'where the auto-TLS certificate and key are written'},
  {option: 'debug', param: 'ipa-debug', type: 'bool', default: false, help: 'debug logging'},
  {option: 'standalone', param: 'ipa-standalone', type: 'bool', default: false, help: 'no lookup or heartbeat: serve the API only'},
  {option: 'hardware_managers_dir', param: 'ipa-hardware-managers-dir', type: 'list', default: ['/usr/share/rdk/hardware-managers', '/etc/rdk/hardware-managers'], help: 'directories whose *.js/*.mjs modules are loaded as hardware managers'},
  {option: 'device_allowlist', param: 'ipa-device-allowlist', type: 'list', default: [], help: 'if set, the only block devices the agent sees, reports and touches'},
  {option: 'image_spool_dir', param: 'ipa-image-spool-dir', type: 'string', default: undefined, help: 'where images that cannot be streamed (vmdk, vhd…, odd qcow2 layouts) are downloaded before qemu-img converts them (default: the temp dir)'},
  {option: 'permitted_image_formats', param: 'ipa-permitted-image-formats', type: 'list', default: ['raw', 'gpt', 'qcow2'], help: 'image formats the agent will write'},
  {option: 'enable_bios_bootloader_install', param: 'ipa-enable-bios-bootloader-install', type: 'bool', default: false, help: 'install GRUB for BIOS partition images'},
  {option: 'system_actions', param: 'ipa-system-actions', type: 'string', default: 'auto', help: 'power off/reboot/NIC lockdown: real, simulate, or auto (real only when running from a ramdisk)'},
  {option: 'rescue_config_dir', param: 'ipa-rescue-config-dir', type: 'string', default: '/etc/ipa-rescue-config', help: 'where rescue.finalize_rescue writes the rescue password hash'},
  {option: 'boot_method', param: 'boot_method', type: 'string', default: undefined, help: 'vmedia when booted from virtual media'},
  {option: 'bootif', param: 'BOOTIF', type: 'string', default: undefined, help: 'PXE boot interface MAC (01-aa-bb-cc-dd-ee-ff)'},
] as const satisfies readonly Setting[]

type SettingOf<O extends string> = Extract<(typeof SETTINGS)[number], {option: O}>
type ValueOf<T extends SettingType> = T extends 'int' | 'float' ? number : T extends 'bool' ? boolean : T extends 'list' ? string[] : string
type Camel<S extends string> = S extends `${infer H}_${infer T}` ? `${H}${Capitalize<Camel<T>>}` : S

/** The merged, typed agent configuration. */
export type AgentConfig = {
  -readonly [K in (typeof SETTINGS)[number]['option'] as Camel<K>]: SettingOf<K>['default'] extends undefined
    ? ValueOf<SettingOf<K>['type']> | undefined
    : ValueOf<SettingOf<K>['type']>
}

export class ConfigError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'ConfigError'
  }
}

export function camel(option: string): string {
  return option.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase())
}

/** The CLI flag name of a setting: the kernel parameter without `ipa-` (BOOTIF → bootif). */
export function flagName(s: Setting): string {
  return s.param.replace(/^ipa-/, '').toLowerCase().replace(/_/g, '-')
}

const TRUE = new Set(['1', 'true', 'yes', 'on', 'y', 't'])
const FALSE = new Set(['0', 'false', 'no', 'off', 'n', 'f', ''])

/** Parse one raw value (string from cmdline/flag, or JSON value from a config file). */
export function parseValue(s: Setting, raw: unknown, source: string): unknown {
  const where = `${s.param} (from ${source})`
  switch (s.type) {
    case 'string':
      if (typeof raw === 'string') return raw
      if (typeof raw === 'number' || typeof raw === 'boolean') return String(raw)
      throw new ConfigError(`${where}: expected a string, got ${JSON.stringify(raw)}`)
    case 'int':
    case 'float': {
      const n = typeof raw === 'number' ? raw : typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : NaN
      if (!Number.isFinite(n) || (s.type === 'int' && !Number.isInteger(n))) {
        throw new ConfigError(`${where}: expected ${s.type === 'int' ? 'an integer' : 'a number'}, got ${JSON.stringify(raw)}`)
      }
      if (n < 0) throw new ConfigError(`${where}: must not be negative, got ${n}`)
      return n
    }
    case 'bool': {
      if (typeof raw === 'boolean') return raw
      const v = String(raw).trim().toLowerCase()
      if (TRUE.has(v)) return true
      if (FALSE.has(v)) return false
      throw new ConfigError(`${where}: expected a boolean (1/0, true/false), got ${JSON.stringify(raw)}`)
    }
    case 'list':
      if (Array.isArray(raw)) return raw.map(String).filter(Boolean)
      if (typeof raw === 'string')
        return raw
          .split(',')
          .map((x) => x.trim())
          .filter(Boolean)
      throw new ConfigError(`${where}: expected a comma-separated list, got ${JSON.stringify(raw)}`)
  }
}

/**
 * Split a kernel command line into key=value pairs. Tokens without `=` are ignored; double
 * quotes group a value containing spaces (as the kernel itself allows).
 */
export function parseCmdline(text: string): Map<string, string> {
  const out = new Map<string, string>()
  const tokens = text.match(/(?:[^\s"]+|"[^"]*")+/g) ?? []
  for (const token of tokens) {
    const eq = token.indexOf('=')
    if (eq <= 0) continue
    const key = token.slice(0, eq)
    const value = token.slice(eq + 1).replace(/^"(.*)"$/s, '$1')
    out.set(key, value)
  }
  return out
}

const byParam = new Map<string, Setting>(SETTINGS.map((s) => [s.param.toLowerCase(), s]))
const byOption = new Map<string, Setting>(SETTINGS.map((s) => [s.option, s]))
const byFlag = new Map<string, Setting>(SETTINGS.map((s) => [flagName(s), s]))

/** Find a setting by kernel parameter, option name, camelCase name or flag name. */
export function findSetting(key: string): Setting | undefined {
  return (
    byParam.get(key.toLowerCase()) ??
    byOption.get(key) ??
    byOption.get(key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)) ??
    byFlag.get(key) ??
    byParam.get(`ipa-${key}`.toLowerCase())
  )
}

export function defaultConfig(): AgentConfig {
  const cfg: Record<string, unknown> = {}
  for (const s of SETTINGS) cfg[camel(s.option)] = Array.isArray(s.default) ? [...s.default] : s.default
  return cfg as AgentConfig
}

export interface ConfigSources {
  /** Parsed config file content (object). Unknown keys are an error. */
  file?: {path: string; data: unknown}
  /** Kernel command line text. Unknown parameters are ignored (the kernel line holds much else). */
  cmdline?: string
  /** Flag values keyed by flag name (e.g. 'api-url'). */
  flags?: Record<string, unknown>
}

/** Merge all sources into a validated AgentConfig. */
export function resolveConfig(src: ConfigSources): AgentConfig {
  const cfg = defaultConfig() as Record<string, unknown>
  if (src.file) {
    const {path, data} = src.file
    if (data === null || typeof data !== 'object' || Array.isArray(data)) {
      throw new ConfigError(`${path}: the agent config must be a JSON object of settings`)
    }
    for (const [key, raw] of Object.entries(data as Record<string, unknown>)) {
      const s = findSetting(key)
      if (!s) throw new ConfigError(`${path}: unknown setting '${key}'`)
      cfg[camel(s.option)] = parseValue(s, raw, path)
    }
  }
  if (src.cmdline !== undefined) {
    for (const [key, raw] of parseCmdline(src.cmdline)) {
      const s = byParam.get(key.toLowerCase())
      if (!s || (key !== s.param && key.toLowerCase() !== s.param.toLowerCase())) continue
      cfg[camel(s.option)] = parseValue(s, raw, 'kernel command line')
    }
  }
  if (src.flags) {
    for (const [key, raw] of Object.entries(src.flags)) {
      if (raw === undefined) continue
      const s = byFlag.get(key)
      if (!s) throw new ConfigError(`unknown agent option --${key}`)
      cfg[camel(s.option)] = parseValue(s, raw, `--${key}`)
    }
  }
  return validate(cfg as AgentConfig)
}

function validate(cfg: AgentConfig): AgentConfig {
  for (const url of cfg.apiUrl) {
    if (url === 'mdns') throw new ConfigError('ipa-api-url=mdns: mDNS discovery is not supported by rdk; give the URL')
    let u: URL
    try {
      u = new URL(url)
    } catch {
      throw new ConfigError(`ipa-api-url: '${url}' is not a URL`)
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new ConfigError(`ipa-api-url: '${url}' must be http:// or https://`)
  }
  if (cfg.inspectionCallbackUrl !== undefined && cfg.inspectionCallbackUrl !== 'mdns') {
    try {
      new URL(cfg.inspectionCallbackUrl)
    } catch {
      throw new ConfigError(`ipa-inspection-callback-url: '${cfg.inspectionCallbackUrl}' is not a URL`)
    }
  }
  if (!['http', 'https'].includes(cfg.advertiseProtocol)) throw new ConfigError(`ipa-advertise-protocol must be http or https, got '${cfg.advertiseProtocol}'`)
  for (const [name, port] of [
    ['ipa-listen-port', cfg.listenPort],
    ['ipa-advertise-port', cfg.advertisePort ?? 0],
  ] as const) {
    if (port < 0 || port > 65535) throw new ConfigError(`${name} must be a port number (0-65535), got ${port}`)
  }
  if (!['p256', 'p384', 'p521'].includes(cfg.tlsCertificateCurve))
    throw new ConfigError(`ipa-tls-certificate-curve must be p256, p384 or p521, got '${cfg.tlsCertificateCurve}'`)
  if (!['1.2', '1.3'].includes(cfg.tlsMinVersion)) throw new ConfigError(`ipa-tls-min-version must be 1.2 or 1.3, got '${cfg.tlsMinVersion}'`)
  if (cfg.listenTls && (!cfg.tlsCertFile || !cfg.tlsKeyFile)) throw new ConfigError('ipa-listen-tls needs both tls_cert_file and tls_key_file')
  if (!['auto', 'real', 'simulate'].includes(cfg.systemActions))
    throw new ConfigError(`ipa-system-actions must be auto, real or simulate, got '${cfg.systemActions}'`)
  if (cfg.apiMaxBodySize < 1) throw new ConfigError(`ipa-api-max-body-size must be at least 1 (MiB), got ${cfg.apiMaxBodySize}`)
  if (cfg.apiClientTimeout <= 0) throw new ConfigError(`ipa-api-client-timeout must be more than 0 seconds, got ${cfg.apiClientTimeout}`)
  if (cfg.injectFilesPriority > 99) throw new ConfigError(`ipa-inject-files-priority must be 0-99, got ${cfg.injectFilesPriority}`)
  for (const dev of cfg.deviceAllowlist) {
    if (!dev.startsWith('/dev/')) throw new ConfigError(`device allow-list entries must be /dev paths, got '${dev}'`)
  }
  if (cfg.bootif !== undefined && bootifMac(cfg.bootif) === undefined) throw new ConfigError(`BOOTIF '${cfg.bootif}' is not a MAC address`)
  return cfg
}

/** BOOTIF=01-aa-bb-cc-dd-ee-ff (or a plain MAC) → aa:bb:cc:dd:ee:ff. */
export function bootifMac(bootif: string): string | undefined {
  const hex = bootif.toLowerCase().replace(/[-:]/g, '')
  const body = hex.length === 14 && hex.startsWith('01') ? hex.slice(2) : hex
  if (!/^[0-9a-f]{12}$/.test(body)) return undefined
  return body.match(/../g)!.join(':')
}

/** Read a config file: JSON object keyed by kernel parameter or option names. */
export async function readConfigFile(path: string, required: boolean): Promise<{path: string; data: unknown} | undefined> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    if (!required && (err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw new ConfigError(`cannot read agent config ${path}: ${(err as Error).message}`)
  }
  try {
    return {path, data: JSON.parse(text)}
  } catch (err) {
    throw new ConfigError(`${path}: not valid JSON: ${(err as Error).message}`)
  }
}
