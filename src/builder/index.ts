/**
 * The builder's public API, for commands and for flavor code (src/flavors/) that lists stages.
 * See docs/build.md. The flavor table and buildImage() are in src/flavors/index.ts.
 */
export {
  resolveSpec,
  finishSpec,
  parseConfigText,
  kernelCmdline,
  parseAuthorizedKeys,
  SPEC_SETTINGS,
  buildFlagTable,
  FLAVORS,
  FORMATS,
  DEFAULT_SOURCE_DATE_EPOCH,
} from './spec.js'
export type {BuildSpec, Flavor, Format, SpecSetting, SpecSources} from './spec.js'
export {FileTree, BlobStore, normalisePath, comparePaths, TreeError} from './tree.js'
export type {TreeEntry, EntryType, AddOptions} from './tree.js'
export {writeCpio, cpioChunks, parseCpio, CPIO_FORMAT} from './cpio.js'
export {compressFile, gzipTo, COMPRESSIONS} from './compress.js'
export type {Compression} from './compress.js'
export {ElementCatalog, elementSearchPaths, resolveElements, loadElement, hooksFor, HOOK_PHASES, BUILTIN_ELEMENTS_DIR} from './elements.js'
export type {Element, ElementManifest, PackageRequest, Hook, HookPhase} from './elements.js'
export {runHooks} from './hooks.js'
export {BuildCache, cacheKey, canonicalJson} from './cache.js'
export {FINAL_STAGE} from './stage.js'
export type {Stage, FlavorDefinition} from './stage.js'
export {Outputs} from './context.js'
export type {BuildContext, PlanContext, KernelInfo, InstalledPackage, Artefact, InitramfsInfo, BootFile, BootFileKind} from './context.js'
export * from './stages.js'
export {runBuild, planBuild, checkSupported, flavorStages, flavorFormats, StageFailedError} from './pipeline.js'
export type {BuildOptions, BuildResult, BuildPlan} from './pipeline.js'
export {BuildError, SpecError, ElementError, BuildInterruptedError, isUserError} from './errors.js'
