// The Store conformance suite (test/store-conformance.ts) against CacheStore over a file:// cache.
import { storeConformance } from './store-conformance.js';
import { cacheHarness } from './store-conformance-cache.js';

storeConformance('CacheStore (file://)', cacheHarness);
