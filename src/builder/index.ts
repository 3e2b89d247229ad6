/**
 * The builder's public API, for commands and for the flavor/Debian/kernel/agent code that plugs
 * stages in. See docs/build.md.
 */
export {resolveSpec, finishSpec, parseConfigText, kernelCmdline, parseAuthorizedKeys, SPEC_SETTINGS, buildFlagTable, FLAVORS, FORMATS, DEFAULT_SOURCE_DATE_EPOCH} from './spec.js'
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
export {StageRegistry, FINAL_STAGE} from './registry.js'
export type {Stage, StagePosition, FlavorDefinition} from './registry.js'
export {Outputs} from './context.js'
export type {BuildContext, KernelInfo, InstalledPackage, Artefact} from './context.js'
export {createDefaultRegistry, defaultRegistry, registerStage, loadFlavorModules} from './flavors.js'
export {genericStages} from './stages.js'
export {runBuild, checkSupported, StageFailedError} from './pipeline.js'
export type {BuildOptions, BuildResult} from './pipeline.js'
export {BuildError, SpecError, ElementError, isUserError} from './errors.js'
