// Reading a ledgerd balance exactly from Node.js.
//
// The body of `balance:<hash>` is a bare JSON integer: the balance in units
// (1 token = 100,000,000 units), up to the total supply, 10^19 units. That
// does not fit a JavaScript number: `JSON.parse`, which the Couchbase Node
// SDK's default transcoder calls, silently rounds integers above 2^53
// (about 90 million tokens). So read the document's raw bytes and parse
// them as a BigInt:
//
//   import { connect, RawJsonTranscoder } from 'couchbase'
//   const cluster = await connect('couchbase://db.example', { username, password })
//   const wallets = cluster.bucket('ledger').defaultCollection()
//   const res = await wallets.get(`balance:${hash}`, { transcoder: new RawJsonTranscoder() })
//   const units = parseBalance(res.content)     // a BigInt, exact
//   console.log(tokens(units))                  // "123.45678901"
//
// Never write a balance back: only ledgerd writes wallets (a whole-document
// write drops the idempotency markers; see docs/operations.md).

/** The total supply, in units: 10^19. */
export const TOTAL_SUPPLY_UNITS = 10n ** 19n;
/** Units in one token. */
export const UNITS_PER_TOKEN = 10n ** 8n;

/**
 * The balance a `balance:<hash>` body holds, in units, exactly.
 * @param {Buffer|Uint8Array|string} raw the document's bytes, as stored
 * @returns {bigint}
 */
export function parseBalance(raw) {
  const text = (typeof raw === 'string' ? raw : new TextDecoder('utf-8', { fatal: true }).decode(raw)).trim();
  // A bare non-negative JSON integer: no sign, no fraction, no exponent,
  // no leading zero.
  if (!/^(0|[1-9][0-9]*)$/.test(text)) {
    throw new Error(`not a ledgerd balance: ${JSON.stringify(text.slice(0, 40))}`);
  }
  const units = BigInt(text);
  if (units > TOTAL_SUPPLY_UNITS) {
    throw new Error(`not a ledgerd balance: ${text} units is more than the total supply`);
  }
  return units;
}

/**
 * Units as a decimal token amount with 8 places, e.g. 12345678901n → "123.45678901".
 * @param {bigint} units
 * @returns {string}
 */
export function tokens(units) {
  const whole = units / UNITS_PER_TOKEN;
  const fraction = (units % UNITS_PER_TOKEN).toString().padStart(8, '0');
  return `${whole}.${fraction}`;
}
