// ejs 7 ships no type declarations; the part of its API rdk uses.
declare module 'ejs' {
  interface Options {
    filename?: string
    async?: boolean
    strict?: boolean
    localsName?: string
    rmWhitespace?: boolean
    views?: string[]
    cache?: boolean
  }
  function render(template: string, data?: Record<string, unknown>, opts?: Options): string
  const ejs: {render: typeof render}
  export default ejs
}
