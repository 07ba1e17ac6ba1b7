// The Store conformance suite (test/store-conformance.ts) against LocalStore.
import { storeConformance } from './store-conformance.js';
import { localHarness } from './store-conformance-local.js';

storeConformance('LocalStore', localHarness);
