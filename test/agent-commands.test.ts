import {describe, expect, it} from 'vitest'
import {CommandProcessor, type Extension} from '../src/agent/commands.js'
import {AgentIsBusy, CleaningError, InvalidCommandError, InvalidCommandParamsError, RequestedObjectNotFoundError} from '../src/agent/errors.js'
import {log} from '../src/agent/log.js'

type Ctx = {calls: string[]}
function setup() {
  const ctx: Ctx = {calls: []}
  const asyncDone: string[] = []
  let release!: () => void
  const gate = new Promise<void>((r) => (release = r))
  const p = new CommandProcessor<Ctx>(
    () => ctx,
    log.child({test: true}),
    (r) => asyncDone.push(r.commandName),
  )
  const ext: Extension<Ctx> = {
    name: 'demo',
    commands: {
      hello: {async: false, params: {who: 'optional'}, run: async (params) => `hello ${params.who ?? 'world'}`},
      slow: {
        async: true,
        params: {},
        run: async () => {
          await gate
          return {done: true}
        },
      },
      boom: {
        async: false,
        params: {},
        run: async () => {
          throw new CleaningError('disk on fire')
        },
      },
      badparams: {
        async: false,
        params: {},
        run: async () => {
          throw new InvalidCommandParamsError('nope')
        },
      },
      validated: {
        async: true,
        params: {x: 'required'},
        validate: (p) => {
          if (typeof p.x !== 'number') throw new InvalidCommandParamsError('x must be a number')
        },
        run: async () => 'ok',
      },
      wild: {async: true, params: {a: 'required'}, extraParams: true, run: async (p) => p},
    },
  }
  p.register(ext)
  return {p, ctx, release, asyncDone}
}

describe('command processor', () => {
  it('runs sync commands and wraps string results as IPA does', async () => {
    const {p} = setup()
    const r = await p.execute('demo.hello', {who: 'ironic'})
    expect(r.toJSON()).toMatchObject({command_name: 'hello', command_status: 'SUCCEEDED', command_error: null, command_result: {result: 'hello ironic'}})
    expect(Object.keys(r.toJSON())).not.toContain('command_params')
  })

  it('rejects malformed names, unknown extensions and commands with IPA errors', async () => {
    const {p} = setup()
    await expect(p.execute('nodot', {})).rejects.toThrow(InvalidCommandError)
    await expect(p.execute('nodot', {})).rejects.toThrow('Invalid command: Command name must be of the form <extension>.<name>')
    await expect(p.execute('nosuch.x', {})).rejects.toThrow(new RequestedObjectNotFoundError('Extension', 'nosuch').message)
    await expect(p.execute('demo.nosuch', {})).rejects.toThrow('Invalid command: Unknown command: nosuch')
    await expect(p.execute('demo.constructor', {})).rejects.toThrow('Unknown command: constructor')
  })

  it('is busy (409) while an async command runs, then records its result and signals completion', async () => {
    const {p, release, asyncDone} = setup()
    const r = await p.execute('demo.slow', {})
    expect(r.status).toBe('RUNNING')
    const busy = p.execute('demo.hello', {}).catch((e) => e)
    expect(await busy).toBeInstanceOf(AgentIsBusy)
    expect(((await busy) as AgentIsBusy).code).toBe(409)
    expect(((await busy) as Error).message).toBe('Agent is busy: executing command slow')
    release()
    await r.done
    await new Promise((res) => setTimeout(res, 0))
    expect(r.toJSON()).toMatchObject({command_status: 'SUCCEEDED', command_result: {done: true}})
    expect(asyncDone).toEqual(['slow'])
    expect(p.list().map((x) => x.commandName)).toEqual(['slow'])
  })

  it('records RESTErrors of sync commands as FAILED (200) but returns InvalidContentError to the caller', async () => {
    const {p} = setup()
    const r = await p.execute('demo.boom', {})
    expect(r.toJSON()).toMatchObject({
      command_name: 'demo.boom',
      command_status: 'FAILED',
      command_error: {type: 'CleaningError', code: 500, message: 'Clean step failed', details: 'disk on fire'},
    })
    await expect(p.execute('demo.badparams', {})).rejects.toThrow('Invalid command parameters: nope')
    await expect(p.execute('demo.validated', {x: 'a'})).rejects.toThrow('x must be a number')
    expect(p.list()).toHaveLength(1)
  })

  it('answers wrong parameters with a serialisable TypeError result instead of crashing', async () => {
    const {p} = setup()
    const r = await p.execute('demo.hello', {bogus: 1})
    expect(JSON.parse(JSON.stringify(r))).toMatchObject({
      command_status: 'FAILED',
      command_error: {type: 'TypeError', details: "hello() got an unexpected keyword argument 'bogus'"},
    })
    const a = await p.execute('demo.wild', {})
    await a.done
    expect(a.toJSON()).toMatchObject({command_status: 'FAILED', command_error: {type: 'TypeError'}})
    const b = await p.execute('demo.wild', {a: 1, extra: 2})
    await b.done
    expect(b.toJSON()).toMatchObject({command_status: 'SUCCEEDED', command_result: {a: 1, extra: 2}})
  })

  it('serialises concurrent sync commands instead of refusing them', async () => {
    const {p} = setup()
    const [a, b] = await Promise.all([p.execute('demo.hello', {who: 'a'}), p.execute('demo.hello', {who: 'b'})])
    expect(a.status).toBe('SUCCEEDED')
    expect(b.status).toBe('SUCCEEDED')
  })
})
