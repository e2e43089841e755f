// Run with `node --test examples/node/read-balance.test.mjs` (Node 18 or
// later; no package to install). `cargo test` runs it where node is on
// PATH.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseBalance, tokens, TOTAL_SUPPLY_UNITS } from './read-balance.mjs';

test('the whole supply is read exactly', () => {
  const units = parseBalance(Buffer.from('10000000000000000000'));
  assert.equal(units, 10n ** 19n);
  assert.equal(units, TOTAL_SUPPLY_UNITS);
  assert.equal(tokens(units), '100000000000.00000000');
  // What JSON.parse would have made of it: not the same number once past 2^53.
  assert.notEqual(BigInt(JSON.parse('9007199254740993')), 9007199254740993n);
  assert.equal(parseBalance('9007199254740993'), 9007199254740993n);
});

test('small balances and token text', () => {
  assert.equal(parseBalance('0'), 0n);
  assert.equal(parseBalance(' 12345678901\n'), 12345678901n);
  assert.equal(tokens(12345678901n), '123.45678901');
  assert.equal(tokens(1n), '0.00000001');
});

test('anything but a balance is refused, never rounded', () => {
  for (const bad of ['', '-5', '1.5', '1e3', '01', '"7"', '10000000000000000001', 'null', '{}']) {
    assert.throws(() => parseBalance(bad), /not a ledgerd balance/, bad);
  }
  assert.throws(() => parseBalance(Buffer.from([0xff, 0xfe])));
});
