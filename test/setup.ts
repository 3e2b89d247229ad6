// Keep test output readable: the agent's JSON logs are dropped unless RDK_TEST_LOGS=1.
import {setLogWriter} from '../src/agent/log.js'

if (!process.env.RDK_TEST_LOGS) setLogWriter(() => {})
