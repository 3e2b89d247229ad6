/** rdk's version (kept equal to package.json by test/version.test.ts). */
export const RDK_VERSION = '0.1.0'
