/**
 * YAML loading with source positions, shared by rdk.yaml (the build spec) and element.yaml
 * (element manifests), so every complaint can say `file:line:col`.
 */
import {isMap, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node} from 'yaml'

export type YamlPath = readonly (string | number)[]

export class YamlFile {
  readonly file: string
  readonly data: unknown
  private readonly doc: Document
  private readonly lines: LineCounter

  private constructor(file: string, doc: Document, lines: LineCounter) {
    this.file = file
    this.doc = doc
    this.lines = lines
    this.data = doc.toJS({maxAliasCount: 100}) as unknown
  }

  /**
   * Parse `text` (the content of `file`). Syntax errors are thrown through `makeError` so each
   * caller raises its own error class.
   */
  static parse(file: string, text: string, makeError: (msg: string) => Error): YamlFile {
    const lines = new LineCounter()
    const doc = parseDocument(text, {lineCounter: lines, prettyErrors: true, uniqueKeys: true})
    if (doc.errors.length > 0) {
      const e = doc.errors[0]!
      const pos = e.linePos?.[0]
      const first = e.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '')
      throw makeError(`${file}${pos ? `:${pos.line}:${pos.col}` : ''}: invalid YAML: ${first}`)
    }
    return new YamlFile(file, doc, lines)
  }

  private node(path: YamlPath, key = false): Node | undefined {
    let node: unknown = this.doc.contents
    for (let i = 0; i < path.length; i++) {
      const part = path[i]!
      if (isMap(node)) {
        const pair = node.items.find((p) => (isScalar(p.key) ? String(p.key.value) : String(p.key)) === String(part))
        if (!pair) return undefined
        node = key && i === path.length - 1 ? pair.key : pair.value
      } else if (isSeq(node) && typeof part === 'number') {
        node = node.items[part]
      } else {
        return undefined
      }
    }
    return node as Node | undefined
  }

  /** `file:line:col` of the value (or with `key`, the key) at `path`; just `file` if unknown. */
  where(path: YamlPath, key = false): string {
    const node = this.node(path, key)
    const offset = node?.range?.[0]
    if (offset === undefined) return this.file
    const {line, col} = this.lines.linePos(offset)
    return `${this.file}:${line}:${col}`
  }

  /** The scalar's text as written (e.g. `0755`, which YAML 1.2 reads as the number 755). */
  sourceText(path: YamlPath): string | undefined {
    const node = this.node(path)
    return isScalar(node) && typeof node.source === 'string' ? node.source : undefined
  }
}

/** Near names, for "did you mean" hints: edit distance ≤ 2, or one contains the other. */
export function nearNames(name: string, candidates: Iterable<string>, max = 3): string[] {
  const scored: [number, string][] = []
  for (const c of candidates) {
    const d = editDistance(name.toLowerCase(), c.toLowerCase())
    if (d <= 2 || (name.length >= 3 && (c.includes(name) || name.includes(c)))) scored.push([d, c])
  }
  return scored
    .sort((a, b) => a[0] - b[0] || (a[1] < b[1] ? -1 : 1))
    .slice(0, max)
    .map(([, c]) => c)
}

export function editDistance(a: string, b: string): number {
  let prev = Array.from({length: b.length + 1}, (_, i) => i)
  for (let i = 1; i <= a.length; i++) {
    const cur = [i]
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
    prev = cur
  }
  return prev[b.length]!
}

/** Parse a file mode given in YAML: '0755' / "755" (octal text), or 0755 unquoted (read back from source). */
export function parseMode(value: unknown, source: string | undefined, where: string, makeError: (m: string) => Error): number {
  let text: string | undefined
  if (typeof value === 'string') text = value.trim()
  else if (typeof value === 'number') {
    if (source && /^0o?[0-7]+$/.test(source)) text = source.replace(/^0o/, '0')
    else if (source && /^0x/i.test(source)) text = undefined
    else if (Number.isInteger(value) && /^[0-7]{3,4}$/.test(String(value))) text = String(value)
  }
  if (text === undefined || !/^0?o?[0-7]{1,4}$/.test(text)) {
    throw makeError(`${where}: mode must be an octal permission like '0755', got ${JSON.stringify(value)}`)
  }
  const mode = parseInt(text.replace(/^0o/, ''), 8)
  if (mode > 0o7777) throw makeError(`${where}: mode ${text} is larger than 07777`)
  return mode
}
