export { CairnError, ErrorCodes, isCairnError, type ErrorCode } from './errors.js';
export { stage, isStage, type Stage, type StageSpec, type BuildContext, type BuildFn, type Dep, type Resolved, type BuildLog, type ExecOptions } from './stages/stage.js';
export { latest, best, all, some, only, exact, custom, readScore, type Matcher, type MatcherFn, type Candidate, type MatchResult, type ScoreBy } from './stages/matchers.js';
export { instantiate, type Derivation, type Graph } from './stages/instantiate.js';
export { realize, type RealizeOptions, type RealizeResult, type RealizeEvents, type PlanEntry } from './stages/realize.js';
export { Store, defaultStoreRoot, LAYOUT_VERSION, type RealizationMeta, type Context } from './store/store.js';
export { parseRef, type DRef, type RRef } from './store/refs.js';
export { canonicalJson, type Json } from './store/canonical.js';
