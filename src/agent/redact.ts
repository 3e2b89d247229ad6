/**
 * The one place secrets are taken out of what the agent shows: its log (stderr and the in-memory
 * tail), the log bundle (every member), command results and errors, inventory and inspection data.
 *
 * Three layers:
 * - **by value**: every secret the agent knows at run time (the agent token from the config, the
 *   kernel command line, lookup or continue_inspection; secrets a request carried) is replaced
 *   wherever it appears, also URL-encoded;
 * - **by pattern** in text: `name=value` where the name looks secret (ipa-agent-token=…,
 *   --agent-token=…, ?agent_token=…, rootpwd=…, temp_url_sig=…), `--agent-token VALUE`,
 *   userinfo in URLs (`https://user:pass@host` → `https://***@host`), `"password": "…"` in
 *   JSON-ish text, `Basic …` / `Bearer …` credentials;
 * - **by key** in structured data: a string value under a key that looks secret
 *   (rescue_password, image_server_password, image_request_authorization, agent_token,
 *   pull_secret, …) becomes `***`; numbers and booleans (agent_token_required: true) stay.
 */

export const MASK = '***'

/** Key names whose string values are secrets. */
const SECRET_WORD = '(?:token|passw|pwd|secret|credential|signature|authorization|api[_-]?key|private[_-]?key)'
const SECRET_KEY = new RegExp(`${SECRET_WORD}|(?:^|[_-])sig$`, 'i')

/** Whether `key` names a secret (agent_token, rescue_password, temp_url_sig, X-Amz-Signature, …). */
export function isSecretKey(key: string): boolean {
  return SECRET_KEY.test(key)
}

// name=value where the name looks secret; the name starts after a separator (start, blank, quote,
// URL query separators, brackets) and may carry dashes (ipa-agent-token, --agent-token).
// Every repetition that could backtrack is bounded, so no input (a request can put text in the
// log) makes a pattern slower than linear.
const NAME = String.raw`[-\w.]{0,64}?(?:${SECRET_WORD}|(?:^|[_-])sig)[-\w.]{0,64}`
// (\0 separates the arguments in /proc/<pid>/cmdline)
const ASSIGN_QUOTED = new RegExp(String.raw`((?:^|[\s\0"'?&;,(\[{])${NAME}=)"[^"\n\0]*"`, 'gim')
const ASSIGN = new RegExp(String.raw`((?:^|[\s\0"'?&;,(\[{])${NAME}=)[^\s\0"'&;,)\]}]+`, 'gim')
// --agent-token VALUE (argv as ps shows it)
const SPACED_FLAG = new RegExp(String.raw`((?:^|[\s\0])--[-\w]{0,64}${SECRET_WORD}[-\w]{0,64}[\s\0]{1,8})(?!--)[^\s\0"']+`, 'gim')
// scheme://userinfo@
const URL_USERINFO = /\b([a-z][a-z0-9+.-]{0,31}:\/\/)[^/\s@"'<>]{1,1024}@/gi
// "password": "x" / 'password': 'x' (JSON or Python repr inside text)
const JSON_PAIR = new RegExp(
  String.raw`(["'][-\w.]{0,64}${SECRET_WORD}[-\w.]{0,64}["'] {0,4}: {0,4})("(?:[^"\\\n]|\\.){0,4096}"|'(?:[^'\\\n]|\\.){0,4096}')`,
  'gi',
)
// Authorization: Basic …, "authorization": "Bearer …"
const HTTP_CRED = /(authorization["']? {0,4}[:=] {0,4}["']?)(Basic|Bearer|Token) {1,4}[^\s"',}]+/gi

/** Secret values known at run time, longest first (so a secret containing another is masked whole). */
let secrets: string[] = []

/** Shortest value masked by value: shorter secrets are still masked by key and pattern. */
export const MIN_SECRET_LENGTH = 8

/** Remember `value` as a secret to mask wherever it appears (ignored if not a string or too short). */
export function addSecret(value: unknown): void {
  if (typeof value !== 'string' || value.length < MIN_SECRET_LENGTH || value === '******') return
  const forms = new Set([value])
  try {
    forms.add(encodeURIComponent(value))
  } catch {
    // lone surrogate: no encoded form
  }
  let changed = false
  for (const f of forms) {
    if (!secrets.includes(f)) {
      secrets.push(f)
      changed = true
    }
  }
  if (changed) secrets.sort((a, b) => b.length - a.length)
}

/** The secrets known so far (tests). */
export function knownSecrets(): readonly string[] {
  return secrets
}

/** Forget every secret (tests). */
export function clearSecrets(): void {
  secrets = []
}

/**
 * Remember the secrets a request carries: string values under secret-looking keys (rescue_password,
 * image_server_password, image_request_authorization, pull_secret, …) and the userinfo of URLs
 * (image sources, proxies, config drives), at any depth.
 */
export function addSecretsFrom(value: unknown, depth = 0): void {
  if (depth > 32 || value === null || value === undefined) return
  if (typeof value === 'string') {
    if (value.includes('://') && value.includes('@')) addUrlSecrets(value)
    return
  }
  if (typeof value !== 'object') return
  if (Array.isArray(value)) {
    for (const v of value) addSecretsFrom(v, depth + 1)
    return
  }
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
    if (typeof v === 'string' && isSecretKey(k)) addSecret(v)
    addSecretsFrom(v, depth + 1)
  }
}

function addUrlSecrets(text: string): void {
  for (const m of text.matchAll(/\b[a-z][a-z0-9+.-]{0,31}:\/\/([^/\s@"'<>]{1,1024})@/gi)) {
    const info = m[1]!
    const colon = info.indexOf(':')
    const password = colon >= 0 ? info.slice(colon + 1) : info
    addSecret(password)
    try {
      addSecret(decodeURIComponent(password))
    } catch {
      // not percent-encoded
    }
  }
}

/** Mask secrets in free text (log lines, command output, file copies, error messages). */
export function redactText(text: string): string {
  if (!text) return text
  let out = text
  for (const s of secrets) if (out.includes(s)) out = out.split(s).join(MASK)
  out = out
    .replace(URL_USERINFO, `$1${MASK}@`)
    .replace(ASSIGN_QUOTED, `$1"${MASK}"`)
    .replace(ASSIGN, `$1${MASK}`)
    .replace(SPACED_FLAG, `$1${MASK}`)
    .replace(JSON_PAIR, (_m, head: string, val: string) => `${head}${val[0]}${MASK}${val[0]}`)
    .replace(HTTP_CRED, `$1$2 ${MASK}`)
  return out
}

/**
 * Mask secrets in bytes that may not be text (a bundle member): the bytes are matched as latin1,
 * which maps every byte to one character and back, so binary content outside a match is untouched.
 */
export function redactBuffer(buf: Buffer): Buffer {
  const text = buf.toString('latin1')
  // Secret values as their UTF-8 bytes seen through latin1.
  let out = text
  for (const s of secrets) {
    const asBytes = Buffer.from(s, 'utf8').toString('latin1')
    if (out.includes(asBytes)) out = out.split(asBytes).join(MASK)
  }
  const patterned = redactText(out)
  return patterned === text ? buf : Buffer.from(patterned, 'latin1')
}

/**
 * A copy of plain JSON data (what JSON.parse returns) with secrets masked: string values under
 * secret keys become `***`, every other string goes through redactText.
 */
export function redactJson<T>(value: T): T {
  return walk(value, 0) as T
}

/**
 * Maps whose keys are names, not secrets: get_*_steps' hardware_manager_version is keyed by manager
 * name ("token_vault": "1.0"), and Ironic sends it back to be compared, so its values must stay.
 */
const NAME_KEYED = new Set(['hardware_manager_version'])

function walk(v: unknown, depth: number, keysAreNames = false): unknown {
  if (typeof v === 'string') return redactText(v)
  if (v === null || typeof v !== 'object' || depth > 256) return v
  if (Array.isArray(v)) return v.map((x) => walk(x, depth + 1))
  const out: Record<string, unknown> = {}
  for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
    const value = typeof x === 'string' && !keysAreNames && isSecretKey(k) && x !== '' ? MASK : walk(x, depth + 1, NAME_KEYED.has(k))
    // defineProperty: a "__proto__" key (JSON.parse makes it an own key) stays a plain key
    Object.defineProperty(out, k, {value, enumerable: true, writable: true, configurable: true})
  }
  return out
}
