// Counts the results of an http-tests/cache-tests run the way cache-tests.fyi
// shows them (pass, fail, optional fail, yes/no checks, setup and harness
// failures, dependency failures), beside the published results of the same
// checkout, and lists ringway's failures.
//
//   node summary.mjs CHECKOUT RESULTS.json
import { pathToFileURL } from 'node:url'
import { readFileSync } from 'node:fs'
import path from 'node:path'

const [checkout, ours] = process.argv.slice(2)
const load = (p) => import(pathToFileURL(path.join(checkout, p)).href)
const tests = (await load('tests/index.mjs')).default
const { determineTestResult, resultTypes } = await load('test-engine/lib/results.mjs')
const index = (await load('results/index.mjs')).default

const kinds = Object.fromEntries(Object.entries(resultTypes).map(([name, t]) => [t[2], name]))
function count (results) {
  const counts = {}
  const failed = []
  for (const suite of tests) {
    for (const test of suite.tests) {
      const symbol = determineTestResult(tests, test.id, results)[2]
      const kind = kinds[symbol]
      counts[kind] = (counts[kind] || 0) + 1
      if (kind === 'fail') failed.push(`${test.id}: ${test.name}`)
    }
  }
  return { counts, failed }
}

const rows = [['ringway', JSON.parse(readFileSync(ours, 'utf8'))]]
for (const item of index.filter(i => i.type === 'rev-proxy' || i.type === 'fwd-proxy')) {
  rows.push([`${item.name} ${item.version || ''}`.trim(),
    JSON.parse(readFileSync(path.join(checkout, 'results', item.file), 'utf8'))])
}
const columns = ['pass', 'fail', 'optional_fail', 'yes', 'no', 'setup_fail', 'harness_fail', 'dependency_fail', 'retry', 'untested']
console.log(`| cache | ${columns.join(' | ')} |`)
console.log(`|---|${columns.map(() => '---:').join('|')}|`)
let ourFailures = []
for (const [name, results] of rows) {
  const { counts, failed } = count(results)
  if (name === 'ringway') ourFailures = failed
  console.log(`| ${name} | ${columns.map(c => counts[c] || 0).join(' | ')} |`)
}
console.log(`\nringway's failures (${ourFailures.length}):`)
for (const f of ourFailures) console.log(`- ${f}`)
