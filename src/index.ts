// Cairn's public types use Node's (Buffer, NodeJS.ProcessEnv, streams). The
// reference, kept in index.d.ts, loads them from the user's @types/node even
// when their tsconfig lists no "types" (TypeScript 6 and later load none by
// default).
/// <reference types="node" preserve="true" />
export { CairnError, ErrorCodes, isCairnError, type ErrorCode } from './errors.js';
export {
  stage,
  isStage,
  type Stage,
  type StageSpec,
  type BuildContext,
  type BuildFn,
  type Dep,
  type Resolved,
  type BuildLog,
  type ExecOptions,
} from './stages/stage.js';
export {
  latest,
  best,
  all,
  some,
  only,
  exact,
  custom,
  readScore,
  type Matcher,
  type MatcherFn,
  type Candidate,
  type MatchResult,
  type ScoreBy,
} from './stages/matchers.js';
export { instantiate, type Derivation, type Graph } from './stages/instantiate.js';
export {
  realize,
  type RealizeOptions,
  type RealizeResult,
  type RealizeEvents,
  type PlanEntry,
} from './stages/realize.js';
export { realizePaused, type PausedRealize } from './stages/realize-paused.js';
export { findBreak, type BreakPoint, type BreakInput, type PausedBuild } from './stages/break-point.js';
export { breakShell, type BreakShellOptions } from './stages/break-shell.js';
export { LocalStore, defaultStoreRoot, LAYOUT_VERSION } from './store/store.js';
export {
  candidateOf,
  type Store,
  type RealizationMeta,
  type RealizationInfo,
  type Context,
  type AddRequest,
  type StagedOutput,
  type AddOptions,
  type Added,
  type TempRoots,
  type HeldLock,
  type LockOptions,
} from './store/interface.js';
export { parseRef, makeDRef, asDRef, asRRef, type DRef, type RRef } from './store/refs.js';
export { canonicalJson, type Json } from './store/canonical.js';
export { collectGarbage, type GcOptions, type GcReport } from './store/gc.js';
export { verifyStore, type VerifyReport, type Problem, type ProblemKind } from './store/verify.js';
export { addNamedRoot, removeNamedRoot, addOutLink, listRoots, type RootEntry } from './store/roots.js';
// loadPipelineRecord: for the module a cairn.yaml's code object holds (stages/pipeline/pipeline-code.ts).
export { loadStageFile, loadPipelineRecord, type LoadedStages } from './stages/load.js';
export {
  fetchurl,
  fetchlocal,
  type FetchUrlSpec,
  type FetchLocalSpec,
  type FixedOutput,
} from './stages/builtins/fetch.js';
export { unpack, type UnpackSpec, type ArchiveFormat, type UnpackLimits } from './stages/builtins/unpack.js';
export { parseHash, hashPath, type HashType, type ContentHash } from './stages/builtins/hashes.js';
export {
  loadCatalog,
  selectEntry,
  entryStage,
  catalogStage,
  deviceTypeMatches,
  type Catalog,
  type CatalogEntry,
  type Selection,
  type ActionSpec,
} from './stages/catalog.js';
export {
  fetchEntry,
  findAction,
  runAction,
  writeManifest,
  type Manifest,
  type Action,
  type ActionContext,
  type ActionFn,
} from './stages/catalog-run.js';
export {
  machine,
  step,
  Machine,
  freshState,
  readDescription,
  staleReason,
  registerBackend,
  type MachineDescription,
  type MachineState,
  type Step,
  type StepSpec,
  type StepMachine,
  type ApplyOptions,
  type UseOptions,
} from './stages/machine.js';
export {
  exec,
  scriptRun,
  upload,
  greeting,
  resolveStep,
  BUILTIN_STEPS,
  type CliStep,
  type CliWords,
} from './stages/machine-steps.js';
export { bootedState, type BaseOptions } from './stages/bases/booted-state.js';
export { tiny, tinyFiles } from './stages/bases/tiny.js';
export { machineBase, MACHINE_BASES } from './stages/bases/registry.js';
export { sshBase, type SshBaseOptions } from './stages/bases/ssh-base.js';
export type {
  MachineBackend,
  BackendSession,
  BackendState,
  RunningMachine,
  MachineConsole,
  ExecResult as MachineExecResult,
  ExecOptions as MachineExecOptions,
} from './backends/machine.js';
export {
  push,
  pull,
  listClosure,
  haveRefs,
  resolveRoots,
  type SyncOptions,
  type SyncReport,
  type TransferStats,
  type ClosureListing,
} from './store/sync.js';
export { receiveClosure, type ReceiveReport, type ReceiveOptions, type Refusal } from './store/receive.js';
export { exportClosure, importClosure, type ExportReport } from './store/export.js';
export {
  closureOf,
  dependencyOrder,
  planTransfer,
  parseRemote,
  parseManifest,
  type ClosureManifest,
  type ClosureNode,
  type RemoteSpec,
} from './store/sync-plan.js';
export {
  debootstrap,
  inPrivateMounts,
  ROOTFS_TAR,
  PACKAGES_TXT,
  type DebootstrapSpec,
  type DebootstrapConfig,
} from './stages/builtins/debootstrap.js';
export { dockerImage, type DockerImageSpec } from './stages/bases/docker-image.js';
export { ensureImage, ensureImageAt, imageTag, type ImageDescription } from './backends/containers/image.js';
export { DockerBackend, MACHINE_LABEL, type DockerBackendOptions } from './backends/containers/docker-machine.js';
export { dockerMachineBase } from './stages/bases/docker-base.js';
export { dockerHost, DEFAULT_DOCKER_HOST } from './backends/containers/docker.js';
export {
  service,
  ensemble,
  isEnsemble,
  type ServiceSpec,
  type EnsembleSpec,
  type Ensemble,
  type ServiceHandle,
  type ServiceContext,
  type BuildFromDirectory,
} from './services/spec.js';
export {
  startEnsemble,
  upEnsemble,
  stopEnsemble,
  reloadService,
  ensembleStatus,
  type ServiceReport,
  type ServiceStatus,
  type RunnerOptions,
} from './services/runner.js';
