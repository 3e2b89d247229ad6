// Regenerate the settings tables in the docs from the code (src/docs/tables.ts): npm run docs.
// --check: write nothing, exit 1 if a docs file is out of date. Needs dist/ (npm run build).
import {readFileSync, writeFileSync} from 'node:fs'
import {fileURLToPath} from 'node:url'
import {join} from 'node:path'
import {regenerate} from '../dist/docs/tables.js'

const root = fileURLToPath(new URL('..', import.meta.url))
const check = process.argv.includes('--check')
const read = (f) => readFileSync(join(root, f), 'utf8')
let stale = 0
for (const [file, text] of regenerate(read)) {
  if (read(file) === text) continue
  stale++
  if (check) console.error(`${file}: out of date (npm run docs)`)
  else {
    writeFileSync(join(root, file), text)
    console.error(`${file}: updated`)
  }
}
if (check && stale) process.exit(1)
