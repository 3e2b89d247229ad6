/**
 * Errors the agent reports over its API, named and shaped as IPA names them: Ironic reads
 * `type`, `code`, `message` and `details` from `command_error`, and `faultstring` is
 * `"<message>: <details>"`.
 */

export class RESTError extends Error {
  static defaultMessage = 'An error occurred'
  static defaultDetails = 'An unexpected error occurred. Please try back later.'
  static statusCode = 500
  readonly type: string
  code: number
  details: string

  constructor(details?: string, message?: string) {
    const ctor = new.target as typeof RESTError
    const msg = message ?? ctor.defaultMessage
    const det = details || ctor.defaultDetails
    super(`${msg}: ${det}`)
    this.type = ctor.name
    this.name = ctor.name
    this.code = ctor.statusCode
    this.details = det
    Object.defineProperty(this, 'shortMessage', {value: msg, enumerable: false})
  }

  /** IPA's `message` field: the short text without details. */
  get restMessage(): string {
    return (this as unknown as {shortMessage: string}).shortMessage
  }

  toJSON(): {type: string; code: number; message: string; details: string} {
    return {type: this.type, code: this.code, message: this.restMessage, details: this.details}
  }
}

export class InvalidContentError extends RESTError {
  static override defaultMessage = 'Invalid request body'
  static override statusCode = 400
}
export class NotFound extends RESTError {
  static override defaultMessage = 'Not found'
  static override statusCode = 404
  static override defaultDetails = 'The requested URL was not found.'
}
export class CommandExecutionError extends RESTError {
  static override defaultMessage = 'Command execution failed'
}
export class InvalidCommandError extends InvalidContentError {
  static override defaultMessage = 'Invalid command'
}
export class InvalidCommandParamsError extends InvalidContentError {
  static override defaultMessage = 'Invalid command parameters'
}
export class RequestedObjectNotFoundError extends NotFound {
  constructor(typeDescr: string, objId: string) {
    super(`${typeDescr} with id ${objId} not found.`)
  }
}
export class AgentIsBusy extends CommandExecutionError {
  static override defaultMessage = 'Agent is busy'
  static override statusCode = 409
  constructor(commandName: string) {
    super(`executing command ${commandName}`)
  }
}
export class IronicAPIError extends RESTError {
  static override defaultMessage = 'Error in call to ironic-api'
}
export class HeartbeatError extends IronicAPIError {
  static override defaultMessage = 'Error heartbeating to agent API'
}
export class HeartbeatConflictError extends IronicAPIError {
  static override defaultMessage = 'ConflictError heartbeating to agent API'
}
export class HeartbeatConnectionError extends IronicAPIError {
  static override defaultMessage = 'Error attempting to heartbeat - Possible transitory network failure or blocking port may be present.'
}
export class LookupNodeError extends IronicAPIError {
  static override defaultMessage = 'Error getting configuration from Ironic'
}
export class LookupAgentIPError extends IronicAPIError {
  static override defaultMessage = 'Error finding IP for Ironic Agent'
}
export class ImageDownloadError extends RESTError {
  static override defaultMessage = 'Error downloading image'
  constructor(imageId: string, msg: string) {
    super(`Download of image ${imageId} failed: ${msg}`)
  }
}
export class ImageChecksumError extends RESTError {
  static override defaultMessage = 'Error verifying image checksum'
  constructor(imageId: string, location: string, checksum: string, calculated: string) {
    super(
      `Image failed to verify against checksum. location: ${location}; image ID: ${imageId}; image checksum: ${checksum}; verification checksum: ${calculated}`,
    )
  }
}
export class ImageWriteError extends RESTError {
  static override defaultMessage = 'Error writing image to device'
  constructor(device: string, exitCode: number | string, stdout: string, stderr: string) {
    super(`Writing image to device ${device} failed with exit code ${exitCode}. stdout: ${stdout}. stderr: ${stderr}`)
  }
}
export class SystemRebootError extends RESTError {
  static override defaultMessage = 'Error rebooting system'
  constructor(exitCode: number | string, stdout: string, stderr: string) {
    super(`Reboot script failed with exit code ${exitCode}. stdout: ${stdout}. stderr: ${stderr}.`)
  }
}
export class BlockDeviceEraseError extends RESTError {
  static override defaultMessage = 'Error erasing block device'
}
export class BlockDeviceError extends RESTError {
  static override defaultMessage = 'Block device caused unknown error'
}
export class SoftwareRAIDError extends RESTError {
  static override defaultMessage = 'Software RAID caused unknown error'
}
export class UnknownNodeError extends RESTError {
  static override defaultMessage = 'Agent is not associated with an Ironic node'
}
export class HardwareManagerNotFound extends RESTError {
  static override defaultMessage = 'No valid HardwareManager found'
}
export class HardwareManagerMethodNotFound extends RESTError {
  static override defaultMessage = 'No HardwareManager found to handle method'
  constructor(method: string) {
    super(`Could not find method: ${method}`)
  }
}
export class IncompatibleHardwareMethodError extends RESTError {
  static override defaultMessage = 'HardwareManager method is not compatible with hardware'
}
export class HardwareManagerConfigurationError extends RESTError {
  static override defaultMessage = 'Hardware manager configuration error'
}
export class VersionMismatch extends RESTError {
  static override defaultMessage = 'Hardware managers version mismatch, reload agent with correct version'
  static override statusCode = 409
  constructor(agentVersion: unknown, nodeVersion: unknown) {
    super(`Current versions: ${pyRepr(agentVersion)}, versions used by ironic: ${pyRepr(nodeVersion)}`)
  }
}
export class CleaningError extends RESTError {
  static override defaultMessage = 'Clean step failed'
}
export class DeploymentError extends RESTError {
  static override defaultMessage = 'Deploy step failed'
}
export class ServicingError extends RESTError {
  static override defaultMessage = 'Service step failed'
}
export class DeviceNotFound extends NotFound {
  static override defaultMessage = 'Error finding the disk or partition device to deploy the image onto'
}
export class InvalidImage extends DeploymentError {
  static override defaultMessage = 'The provided image is not valid for use'
}
export class ClockSyncError extends RESTError {
  static override defaultMessage = 'Error syncing system clock'
}
export class ProtectedDeviceError extends CleaningError {
  constructor(device: string, what: string) {
    const details =
      `Protected ${what} located on device ${device}. This volume or contents may be a shared block device. ` +
      'Please consult your storage administrator, and restart cleaning after either detaching the volumes, ' +
      'or instructing the agent to not protect contents.'
    super(details, details)
  }
}
/** A step or command that exists in IPA but whose implementation lands in a later rdk release. */
export class NotImplementedYet extends CommandExecutionError {
  constructor(what: string, issue: string) {
    super(`${what} is not implemented in this rdk agent yet (${issue})`)
  }
}

/** Turn anything thrown inside a command into a RESTError, as IPA does for async commands. */
export function asRESTError(err: unknown): RESTError {
  if (err instanceof RESTError) return err
  if (err instanceof Error) return new CommandExecutionError(err.message)
  return new CommandExecutionError(String(err))
}

/** Python-ish repr of a small JSON value, so texts read like IPA's. */
function pyRepr(v: unknown): string {
  if (v === null || v === undefined) return 'None'
  if (typeof v === 'string') return `'${v}'`
  if (typeof v === 'boolean') return v ? 'True' : 'False'
  if (Array.isArray(v)) return `[${v.map(pyRepr).join(', ')}]`
  if (typeof v === 'object')
    return `{${Object.entries(v as object)
      .map(([k, x]) => `'${k}': ${pyRepr(x)}`)
      .join(', ')}}`
  return String(v)
}
