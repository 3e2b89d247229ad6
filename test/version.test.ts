import {readFileSync} from 'node:fs'
import {expect, it} from 'vitest'
import {RDK_VERSION} from '../src/common/version.js'

it('RDK_VERSION matches package.json', () => {
  expect(RDK_VERSION).toBe(JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version)
})
