// The module graph of src/ has no import circles, and the agent's layers point one way.
//
// Every .ts file under src/ is parsed with TypeScript's own parser; its static imports, `export … from`
// re-exports and dynamic `import('…')` calls with a literal specifier are the edges (type-only imports
// count too: a type-only circle is still a circle in the design, and it turns into a real one the day
// somebody imports a value). Cycles are found as strongly connected components (Tarjan), and each
// component is reported with one concrete cycle through it.
import {readdirSync, readFileSync} from 'node:fs'
import path from 'node:path'
import ts from 'typescript'
import {describe, expect, it} from 'vitest'

const ROOT = path.resolve(import.meta.dirname, '..')
const SRC = path.join(ROOT, 'src')

function tsFiles(dir: string): string[] {
  const out: string[] = []
  for (const entry of readdirSync(dir, {withFileTypes: true})) {
    const p = path.join(dir, entry.name)
    if (entry.isDirectory()) out.push(...tsFiles(p))
    else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) out.push(p)
  }
  return out.sort()
}

/** Module specifiers a file imports: static imports, export-from, import-equals-require, dynamic import('lit'). */
function importSpecifiers(file: string, text: string): string[] {
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS)
  const specs: string[] = []
  const visit = (node: ts.Node): void => {
    if ((ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier)) {
      specs.push(node.moduleSpecifier.text)
    } else if (
      ts.isImportEqualsDeclaration(node) &&
      ts.isExternalModuleReference(node.moduleReference) &&
      ts.isStringLiteral(node.moduleReference.expression)
    ) {
      specs.push(node.moduleReference.expression.text)
    } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) {
      const arg = node.arguments[0]
      if (arg && (ts.isStringLiteral(arg) || ts.isNoSubstitutionTemplateLiteral(arg))) specs.push(arg.text)
    } else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument) && ts.isStringLiteral(node.argument.literal)) {
      specs.push(node.argument.literal.text)
    }
    ts.forEachChild(node, visit)
  }
  visit(sf)
  return specs
}

/** Resolves a relative specifier ('./x.js', '../y/index.js', './z') to a file under src/, or undefined. */
function resolveLocal(from: string, spec: string, known: Set<string>): string | undefined {
  if (!spec.startsWith('.')) return undefined
  const base = path.resolve(path.dirname(from), spec)
  const stem = base.replace(/\.(m?js|ts)$/, '')
  for (const candidate of [`${stem}.ts`, path.join(base, 'index.ts')]) {
    if (known.has(candidate)) return candidate
  }
  throw new Error(`${path.relative(ROOT, from)} imports ${spec}, which resolves to no file under src/`)
}

function buildGraph(): Map<string, string[]> {
  const files = tsFiles(SRC)
  const known = new Set(files)
  const graph = new Map<string, string[]>()
  for (const file of files) {
    const deps = new Set<string>()
    for (const spec of importSpecifiers(file, readFileSync(file, 'utf8'))) {
      const target = resolveLocal(file, spec, known)
      if (target && target !== file) deps.add(target)
    }
    graph.set(rel(file), [...deps].map(rel).sort())
  }
  return graph
}

const rel = (p: string): string => path.relative(ROOT, p).split(path.sep).join('/')

/** Tarjan's strongly connected components with more than one member (self-imports are skipped above). */
function cycles(graph: Map<string, string[]>): string[][] {
  let index = 0
  const idx = new Map<string, number>()
  const low = new Map<string, number>()
  const stack: string[] = []
  const onStack = new Set<string>()
  const out: string[][] = []
  const strong = (v: string): void => {
    idx.set(v, index)
    low.set(v, index)
    index++
    stack.push(v)
    onStack.add(v)
    for (const w of graph.get(v) ?? []) {
      if (!idx.has(w)) {
        strong(w)
        low.set(v, Math.min(low.get(v)!, low.get(w)!))
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v)!, idx.get(w)!))
      }
    }
    if (low.get(v) === idx.get(v)) {
      const comp: string[] = []
      let w: string
      do {
        w = stack.pop()!
        onStack.delete(w)
        comp.push(w)
      } while (w !== v)
      if (comp.length > 1) out.push(comp.sort())
    }
  }
  for (const v of graph.keys()) if (!idx.has(v)) strong(v)
  return out.sort((a, b) => a[0].localeCompare(b[0]))
}

/** One concrete cycle inside a component: the shortest path back to its first member (BFS). */
function oneCycle(graph: Map<string, string[]>, comp: string[]): string[] {
  const members = new Set(comp)
  const start = comp[0]
  const prev = new Map<string, string>()
  const queue = [start]
  while (queue.length > 0) {
    const v = queue.shift()!
    for (const w of graph.get(v) ?? []) {
      if (!members.has(w)) continue
      if (w === start) {
        const pathBack = [v]
        while (pathBack[0] !== start) pathBack.unshift(prev.get(pathBack[0])!)
        return [...pathBack, start]
      }
      if (!prev.has(w)) {
        prev.set(w, v)
        queue.push(w)
      }
    }
  }
  return comp
}

const graph = buildGraph()
const importsUnder = (file: string, dir: string): string[] => (graph.get(file) ?? []).filter((d) => d.startsWith(dir))
const filesUnder = (dir: string): string[] => [...graph.keys()].filter((f) => f.startsWith(dir))

describe('import graph of src/', () => {
  it('parses the imports it should (the parser sees static, type, export-from and dynamic imports)', () => {
    const specs = importSpecifiers(
      'x.ts',
      [
        "import {a} from './a.js'",
        "import type {B} from './b.js'",
        "export {c} from './c.js'",
        "export * from './d.js'",
        "const e = await import('./e.js')",
        "type F = import('./f.js').F",
        "// import {g} from './g.js'",
        'const h = \'import {h} from "./h.js"\'',
      ].join('\n'),
    )
    expect(specs.sort()).toEqual(['./a.js', './b.js', './c.js', './d.js', './e.js', './f.js'])
    // The graph is real: the agent's entry reaches the API server through cli.ts → agent.ts.
    expect(graph.get('src/agent/cli.ts')).toContain('src/agent/agent.ts')
    expect(graph.get('src/agent/agent.ts')).toContain('src/agent/api/server.ts')
    expect(graph.size).toBeGreaterThan(50)
  })

  it('finds a cycle when there is one (the detector itself)', () => {
    const g = new Map([
      ['a', ['b']],
      ['b', ['c']],
      ['c', ['a', 'd']],
      ['d', []],
      ['e', ['e']],
    ])
    const found = cycles(g)
    expect(found).toEqual([['a', 'b', 'c']])
    expect(oneCycle(g, found[0])).toEqual(['a', 'b', 'c', 'a'])
  })

  it('has no import circles', () => {
    const comps = cycles(graph)
    const report = comps.map((c) => `  ${oneCycle(graph, c).join(' → ')}${c.length > 2 ? `  (component: ${c.join(', ')})` : ''}`)
    expect(report, `import cycles under src/:\n${report.join('\n')}`).toEqual([])
  })

  // The agent's disk layering: disk/ is the bottom (block devices, partitions, wipes, guards); image/
  // and hardware/ both build on it. Between the two, only hardware/ → image/ exists: the generic
  // manager's deploy steps (write_image, inject_files) and the software RAID bootloader drive image/,
  // as IPA's GenericHardwareManager does. image/ never reaches back into hardware/.
  it('image/ never imports hardware/ (so the two do not import each other); disk/ imports neither', () => {
    const bad: string[] = []
    for (const f of filesUnder('src/agent/image/')) for (const d of importsUnder(f, 'src/agent/hardware/')) bad.push(`${f} → ${d}`)
    for (const f of filesUnder('src/agent/disk/')) {
      for (const d of graph.get(f) ?? []) {
        // disk/ may use src/common, its own modules and the agent's leaf modules, nothing else.
        const allowed =
          d.startsWith('src/common/') ||
          d.startsWith('src/agent/disk/') ||
          ['src/agent/errors.ts', 'src/agent/log.ts', 'src/agent/redact.ts', 'src/agent/config.ts'].includes(d)
        if (!allowed) bad.push(`${f} → ${d}`)
      }
    }
    expect(filesUnder('src/agent/disk/').length, 'src/agent/disk/ exists').toBeGreaterThan(0)
    expect(bad, bad.join('\n')).toEqual([])
    // The image writer is split: the byte streamer knows nothing of deploys, and partition images
    // and the whole-disk deploy do not import each other's modules back.
    expect(graph.get('src/agent/image/stream.ts')?.filter((d) => /\/(write|partition|configdrive|state)\.ts$/.test(d))).toEqual([])
    expect(graph.get('src/agent/image/partition.ts')).not.toContain('src/agent/image/write.ts')
    expect(graph.get('src/agent/image/write.ts')).toContain('src/agent/image/partition.ts')
  })

  it('the agent never imports the builder, the artefacts or the CLI', () => {
    const bad: string[] = []
    for (const f of filesUnder('src/agent/')) {
      for (const d of graph.get(f) ?? []) {
        if (!d.startsWith('src/agent/') && !d.startsWith('src/common/')) bad.push(`${f} → ${d}`)
      }
    }
    expect(bad, bad.join('\n')).toEqual([])
  })
})
