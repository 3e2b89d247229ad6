import {execFileSync, spawnSync} from 'node:child_process'
import {chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join, resolve} from 'node:path'
import {afterAll, describe, expect, it} from 'vitest'
import {assembleElement} from '../src/builder/assemble.js'
import {ElementError} from '../src/builder/errors.js'
import {ElementCatalog, elementSearchPaths, hooksFor, loadElement, resolveElements, type Element} from '../src/builder/elements.js'
import {runHooks} from '../src/builder/hooks.js'
import {finishSpec} from '../src/builder/spec.js'
import {FileTree} from '../src/builder/tree.js'

const FIXTURES = resolve('test/fixtures/elements')
const BUILTIN = resolve('elements')
const tmp = mkdtempSync(join(tmpdir(), 'rdk-elements-test-'))
afterAll(() => rmSync(tmp, {recursive: true, force: true}))

const catalog = () => ElementCatalog.scan([FIXTURES, BUILTIN], BUILTIN)
const roots = (...names: string[]) => ({roots: names.map((name) => ({name, requiredBy: 'the test'}))})

async function resolveError(...names: string[]): Promise<string> {
  try {
    await resolveElements(await catalog(), roots(...names))
  } catch (err) {
    expect(err).toBeInstanceOf(ElementError)
    return (err as Error).message
  }
  throw new Error('expected an ElementError')
}

let n = 0
/** An element directory with the given files (name → content; mode via [content, mode]). */
function element(name: string, files: Record<string, string | [string, number]>): string {
  const root = join(tmp, `set${n++}`)
  const dir = join(root, name)
  for (const [rel, v] of Object.entries(files)) {
    const p = join(dir, rel)
    mkdirSync(join(p, '..'), {recursive: true})
    const [content, mode] = typeof v === 'string' ? [v, 0o644] : v
    writeFileSync(p, content)
    chmodSync(p, mode)
  }
  return root
}

describe('element catalogue', () => {
  it('finds elements in search-path order; the first of a name wins and shadows the rest', async () => {
    const user = element('base', {'element.yaml': 'description: my own base\n'})
    const cat = await ElementCatalog.scan([user, FIXTURES, BUILTIN], BUILTIN)
    expect(cat.location('base')!.dir).toBe(join(user, 'base'))
    expect(cat.location('base')!.builtin).toBe(false)
    expect(cat.shadowed.map((s) => s.dir)).toContain(join(BUILTIN, 'base'))
    expect(cat.names()).toEqual(expect.arrayContaining(['base', 'base-lite', 'hello', 'cycle-a']))
  })

  it('puts the spec paths first, then $RDK_ELEMENTS_PATH, then the built-in directory', () => {
    expect(elementSearchPaths(['/a'], {RDK_ELEMENTS_PATH: '/b:/c'}, '/builtin')).toEqual(['/a', '/b', '/c', '/builtin'])
  })

  it('loads a manifest: files, modes (quoted or not), templates, hooks (executables only, numeric order)', async () => {
    const el = await (await catalog()).load('hello')
    expect(el.manifest.depends).toEqual(['base-lite'])
    expect(el.manifest.files.find((f) => f.path === '/bin/hello')).toMatchObject({source: join(FIXTURES, 'hello/hello.sh'), mode: 0o755})
    expect(el.manifest.templates[0]).toMatchObject({path: '/etc/motd', mode: 0o640})
    expect(el.hooks['install.d']!.map((h) => h.name)).toEqual(['10-first', '50-marker'])
    expect(el.hooks['finalise.d']!.map((h) => h.name)).toEqual(['90-epoch'])
    expect(el.ignoredHooks).toEqual(['install.d/20-not-executable (not executable)'])
  })
})

describe('manifest errors', () => {
  const load = async (files: Record<string, string | [string, number]>) => {
    const root = element('e', files)
    return loadElement({name: 'e', dir: join(root, 'e'), searchPath: root, builtin: false})
  }

  it('names an unknown key with its line', async () => {
    await expect(load({'element.yaml': 'description: x\ndepend: [a]\n'})).rejects.toThrow(
      /element\.yaml:2:1: unknown key 'depend' \(did you mean 'depends'\?\)/,
    )
  })

  it('refuses sources outside the element and missing sources', async () => {
    await expect(load({'element.yaml': 'files:\n  /etc/x: ../../etc/passwd\n'})).rejects.toThrow(/is outside the element directory/)
    await expect(load({'element.yaml': 'files:\n  /etc/x: nope.txt\n'})).rejects.toThrow(/element\.yaml:2:11: source file 'nope\.txt' does not exist/)
    await expect(load({'element.yaml': 'templates:\n  /etc/x: {template: t.ejs}\n'})).rejects.toThrow(/template 't\.ejs' does not exist/)
  })

  it('requires absolute image paths without ..', async () => {
    await expect(load({'element.yaml': 'files:\n  etc/x: f\n', f: ''})).rejects.toThrow(/image path 'etc\/x' must be absolute/)
    await expect(load({'element.yaml': 'files:\n  /etc/../x: f\n', f: ''})).rejects.toThrow(/'\.\.' is not allowed/)
  })

  it('checks modes, devices and packages', async () => {
    await expect(load({'element.yaml': "files:\n  /x: {source: f, mode: '0999'}\n", f: ''})).rejects.toThrow(/mode must be an octal permission like '0755'/)
    await expect(load({'element.yaml': 'devices:\n  /dev/x: {type: pipe, major: 1, minor: 1}\n'})).rejects.toThrow(/type must be char or block/)
    await expect(load({'element.yaml': 'packages: [Not_A_Package]\n'})).rejects.toThrow(/is not a Debian package name/)
    const ok = await load({'element.yaml': "packages: [busybox, {name: kmod, files: ['/bin/kmod', '/sbin/*']}]\ndirs: {/srv: 0750}\n"})
    expect(ok.manifest.packages).toEqual([{name: 'busybox'}, {name: 'kmod', files: ['/bin/kmod', '/sbin/*']}])
    expect(ok.manifest.dirs).toEqual([{path: '/srv', mode: 0o750}])
  })
})

describe('element graph', () => {
  it('pulls in dependencies and orders them first, ties broken by name', async () => {
    const order = await resolveElements(await catalog(), roots('hello', 'needs-fs'))
    expect(order.map((e) => e.name)).toEqual(['base-lite', 'hello', 'needs-fs'])
    const stable = await resolveElements(await catalog(), roots('needs-fs', 'hello'))
    expect(stable.map((e) => e.name)).toEqual(['base-lite', 'hello', 'needs-fs'])
  })

  it('satisfies a dependency on something provided by a selected element', async () => {
    const order = await resolveElements(await catalog(), roots('needs-fs', 'base-lite'))
    expect(order.map((e) => e.name)).toEqual(['base-lite', 'needs-fs'])
  })

  it('names unknown elements with near names and the search paths', async () => {
    const msg = await resolveError('helo')
    expect(msg).toMatch(/unknown element 'helo' \(required by the test\); did you mean 'hello'\?/)
    expect(msg).toContain(`searched: ${FIXTURES}, ${BUILTIN} (built-in)`)
  })

  it('asks which provider to use when several elements provide a needed capability', async () => {
    expect(await resolveError('needs-fs')).toBe(
      "'filesystem' (required by element needs-fs) is provided by several elements: base, base-lite, fs-alt; add the one to use to the build's elements",
    )
  })

  it('pulls in the only element providing a needed capability (also for roots)', async () => {
    const root = element('prov', {'element.yaml': 'provides: [thing]\n'})
    mkdirSync(join(root, 'user'))
    writeFileSync(join(root, 'user/element.yaml'), 'depends: [thing]\n')
    const cat = await ElementCatalog.scan([root], BUILTIN)
    expect((await resolveElements(cat, roots('user'))).map((e) => e.name)).toEqual(['prov', 'user'])
    expect((await resolveElements(cat, roots('thing'))).map((e) => e.name)).toEqual(['prov'])
  })

  it('prints a dependency cycle as a path', async () => {
    expect(await resolveError('cycle-a')).toBe('element dependency cycle: cycle-a → cycle-b → cycle-a')
  })

  it('refuses conflicting elements, saying who asked for each', async () => {
    expect(await resolveError('hello', 'conflict-x')).toMatch(/element conflict-x \(required by the test\) conflicts with hello \(required by the test\)/)
  })

  it('refuses two elements providing the same thing', async () => {
    expect(await resolveError('hello', 'fs-alt')).toMatch(
      /elements base-lite \(required by element hello\) and fs-alt \(required by the test\) both provide 'filesystem'/,
    )
  })
})

describe('assembling and hooks', () => {
  async function helloTree(): Promise<{tree: FileTree; elements: Element[]}> {
    const elements = await resolveElements(await catalog(), roots('hello'))
    const spec = await finishSpec({name: 'test', kernelArgs: {console: 'ttyS0'}}, {env: {}, cwd: tmp, aptRoot: tmp})
    const tree = new FileTree()
    for (const el of elements)
      await assembleElement(
        tree,
        el,
        spec,
        elements.map((e) => e.name),
      )
    return {tree, elements}
  }

  it('adds files, directory copies, templates, symlinks and devices, attributed to their element', async () => {
    const {tree} = await helloTree()
    expect((await tree.read('/etc/motd')).toString()).toBe('Welcome to test (tiny), built from base-lite, hello by hello.\ncmdline: console=ttyS0\n')
    expect(tree.get('/etc/motd')).toMatchObject({mode: 0o640, source: 'hello'})
    expect(tree.get('/usr/bin/hello')).toMatchObject({mode: 0o755, source: 'hello'}) // /bin is a symlink to usr/bin
    expect(tree.has('/usr/share/hello/a.txt') && tree.has('/usr/share/hello/b.txt')).toBe(true)
    expect(tree.get('/etc/hello-link')).toMatchObject({type: 'symlink', target: 'hello.txt'})
    expect(tree.get('/dev/console')).toMatchObject({type: 'char', major: 5, minor: 1, source: 'base-lite'})
    expect(tree.get('/tmp')!.mode).toBe(0o1777)
  })

  it('runs hooks as host processes against a staged copy and reads the result back', async () => {
    const {tree, elements} = await helloTree()
    const lines: string[] = []
    const r = await runHooks(tree, {
      elements,
      phases: ['install.d', 'finalise.d'],
      stageDir: join(tmp, 'stage-hooks'),
      env: {SOURCE_DATE_EPOCH: '99'},
      log: (l) => lines.push(l),
    })
    expect(r.hooks.map((h) => `${h.phase}/${h.name}`)).toEqual(['install.d/10-first', 'install.d/50-marker', 'finalise.d/90-epoch'])
    expect((await tree.read('/etc/hook-marker')).toString()).toBe('base-lite hello\n')
    expect((await tree.read('/tmp/first')).toString()).toBe('install.d\n')
    expect((await tree.read('/etc/build-epoch')).toString()).toBe('99\n')
    expect((await tree.read('/etc/hello.txt')).toString()).toBe('hello from an element\nchanged by a hook\n')
    expect(tree.get('/etc/hook-marker')!.source).toBe('hello')
    expect(tree.has('/usr/share/hello/b.txt')).toBe(false)
    // untouched entries keep their tree metadata; device nodes (never staged) survive
    expect(tree.get('/etc/motd')!.mode).toBe(0o640)
    expect(tree.get('/root')!.mode).toBe(0o700)
    expect(tree.get('/dev/console')).toMatchObject({type: 'char', major: 5, minor: 1})
    expect(lines).toHaveLength(3)
  })

  it('runs hooks of all elements in numeric (not lexical) order and refuses duplicate names', async () => {
    const root = element('a', {'element.yaml': '', 'install.d/9-nine': ['#!/bin/sh\n', 0o755], 'install.d/10-ten': ['#!/bin/sh\n', 0o755]})
    mkdirSync(join(root, 'b/install.d'), {recursive: true})
    writeFileSync(join(root, 'b/element.yaml'), '')
    writeFileSync(join(root, 'b/install.d/5-five'), '#!/bin/sh\n', {mode: 0o755})
    const cat = await ElementCatalog.scan([root], BUILTIN)
    const els = await resolveElements(cat, roots('a', 'b'))
    expect(hooksFor(els, 'install.d').map((h) => `${h.element}:${h.name}`)).toEqual(['b:5-five', 'a:9-nine', 'a:10-ten'])
    writeFileSync(join(root, 'b/install.d/9-nine'), '#!/bin/sh\n', {mode: 0o755})
    const cat2 = await ElementCatalog.scan([root], BUILTIN)
    const els2 = await resolveElements(cat2, roots('a', 'b'))
    expect(() => hooksFor(els2, 'install.d')).toThrow(/hook install\.d\/9-nine is in both element 'a' and element 'b'/)
  })

  it('stages symlinks so that writing through them never leaves TARGET_ROOT', async () => {
    const tag = `rdk-escape-${process.pid}-${Date.now()}`
    const root = element('writer', {
      'element.yaml': '',
      'install.d/50-write': ['#!/bin/sh\nset -eu\necho inside > "$TARGET_ROOT/etc/abs"\necho inside2 > "$TARGET_ROOT/etc/rel"\n', 0o755],
    })
    const el = await loadElement({name: 'writer', dir: join(root, 'writer'), searchPath: root, builtin: false})
    const tree = new FileTree()
    tree.addDir('/tmp', 0o1777)
    tree.addSymlink('/etc/abs', `/tmp/${tag}-a`)
    tree.addSymlink('/etc/rel', `../../../../../../tmp/${tag}-b`)
    await runHooks(tree, {elements: [el], phases: ['install.d'], stageDir: join(tmp, 'stage-escape'), env: {}, log: () => {}})
    expect(existsSync(`/tmp/${tag}-a`) || existsSync(`/tmp/${tag}-b`)).toBe(false)
    expect((await tree.read(`/tmp/${tag}-a`)).toString()).toBe('inside\n')
    expect((await tree.read(`/tmp/${tag}-b`)).toString()).toBe('inside2\n')
    expect(tree.get('/etc/abs')).toMatchObject({type: 'symlink', target: `/tmp/${tag}-a`})
    expect(tree.get('/etc/rel')).toMatchObject({type: 'symlink', target: `../../../../../../tmp/${tag}-b`})
  })

  it('reports a failing hook with its element, exit code and stderr', async () => {
    const elements = await resolveElements(await catalog(), roots('failing-hook'))
    const tree = new FileTree()
    for (const el of elements) await assembleElement(tree, el, await finishSpec({}, {env: {}, cwd: tmp, aptRoot: tmp}), [])
    await expect(runHooks(tree, {elements, phases: ['finalise.d'], stageDir: join(tmp, 'stage-fail'), env: {}, log: () => {}})).rejects.toThrow(
      /hook finalise\.d\/50-fail of element 'failing-hook' exited with code 3:\nsomething went wrong in the hook/,
    )
  })

  it('reports a template error with the template file', async () => {
    const root = element('t', {'element.yaml': 'templates:\n  /etc/x: x.ejs\n', 'x.ejs': '<%= nosuchvar %>\n'})
    const el = await loadElement({name: 't', dir: join(root, 't'), searchPath: root, builtin: false})
    const spec = await finishSpec({}, {env: {}, cwd: tmp, aptRoot: tmp})
    await expect(assembleElement(new FileTree(), el, spec, ['t'])).rejects.toThrow(
      /template .*x\.ejs of element 't': [\s\S]*>> 1\| <%= nosuchvar %>[\s\S]*nosuchvar is not defined/,
    )
  })
})

describe('rdk elements', () => {
  const cli = resolve('bin/run.js')
  it.skipIf(!existsSync(resolve('dist/commands/elements.js')))('lists elements with descriptions and origins as JSON (needs npm run build)', () => {
    const out = execFileSync(process.execPath, [cli, 'elements', '--json', '--elements-path', FIXTURES], {encoding: 'utf8'})
    const data = JSON.parse(out) as {searchPaths: string[]; elements: {name: string; description: string; origin: string; dir: string; depends: string[]}[]}
    expect(data.searchPaths[0]).toBe(FIXTURES)
    const hello = data.elements.find((e) => e.name === 'hello')!
    expect(hello).toMatchObject({origin: 'user', dir: join(FIXTURES, 'hello'), depends: ['base-lite']})
    expect(hello.description).toMatch(/Test element/)
    expect(data.elements.find((e) => e.name === 'base')).toMatchObject({origin: 'built-in'})
    const text = spawnSync(process.execPath, [cli, 'elements', '--elements-path', FIXTURES], {encoding: 'utf8'})
    expect(text.status).toBe(0)
    expect(text.stdout).toMatch(/^base-lite\s+Minimal skeleton/m)
    expect(text.stdout).toMatch(/^base\s+Filesystem skeleton.*\n\s+\[built-in; provides: filesystem\]$/m)
    expect(text.stdout).toMatch(/^hello\s+Test element.*\n\s+\[.*fixtures\/elements\/hello; depends: base-lite\]$/m)
  })
})
